"""Apply a freeze plan to a backbone: requires_grad, BatchNorm policy, optimizer parameter groups."""

from __future__ import annotations

from typing import Iterable

from torch import nn

from ..backbone import Backbone
from ..strategy import BN_POLICIES, FreezePlan, ParamInfo, selector
from ..torch_compat import import_timm

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def keep_bn_in_eval(backbone: Backbone, unit: str) -> list:
    """BatchNorm modules whose parameters all lie in ``unit`` run in inference mode from now on (their
    running statistics stop changing); the hook handles, one per module."""
    return [backbone.model.get_submodule(name).register_forward_pre_hook(_force_eval)
            for name in _bn_modules_within(backbone, {unit})]


def _force_eval(module: nn.Module, _inputs) -> None:
    # A parent's .train() resets child.training; re-assert inference mode on every call.
    module.training = False


def _bn_modules_within(backbone: Backbone, units: set[str]) -> list[str]:
    """Names of BatchNorm modules whose parameters all lie in ``units``."""
    inside = {p for u in backbone.units if u.name in units for p in u.params}
    out = []
    for name, module in backbone.model.named_modules():
        if isinstance(module, _BN_TYPES):
            own = [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
            if own and all(p in inside for p in own):
                out.append(name)
    return out


def frozen_bn_modules(backbone: Backbone, plan: FreezePlan) -> list[str]:
    """Names of BatchNorm modules whose parameters all lie in units frozen at the start."""
    return _bn_modules_within(backbone, set(plan.frozen))


def owners(model: nn.Module) -> dict[str, nn.Module]:
    """Each parameter's name -> the module that holds it."""
    return {f"{m_name}.{p_name}" if m_name else p_name: module
            for m_name, module in model.named_modules() for p_name, _ in module.named_parameters(recurse=False)}


def unit_trainable_params(backbone: Backbone, plan: FreezePlan, units: Iterable[str]) -> list[str]:
    """Parameter names of ``units`` that train under the plan's selector (``param_filter``)."""
    wanted = set(units)
    pairs = [(u.name, p) for u in backbone.units if u.name in wanted for p in u.params]
    if plan.param_filter == "all":
        return [p for _, p in pairs]
    select, held_by = selector(plan.param_filter), owners(backbone.model)
    return [p for unit, p in pairs if select(ParamInfo(p, held_by[p], unit))]


def apply_plan(backbone: Backbone, plan: FreezePlan) -> None:
    """Set the plan's starting state in place: what trains, and BatchNorm in frozen units."""
    if plan.bn_policy not in BN_POLICIES:
        raise ValueError(f"bn_policy must be one of {BN_POLICIES}, not {plan.bn_policy!r}")
    selector(plan.param_filter)  # a named selector, or a callable: checked before anything changes
    named = {u for p in plan.phases for u in p.unfreeze} | set(plan.frozen) | set(plan.trainable)
    unknown = named - set(backbone.unit_names())
    if unknown:
        raise ValueError(f"plan names units {sorted(unknown)} that backbone {backbone.name} lacks")
    params = dict(backbone.model.named_parameters())
    for p in params.values():
        p.requires_grad_(False)
    for name in unit_trainable_params(backbone, plan, plan.trainable):
        params[name].requires_grad_(True)
    for name in (*backbone.head.params, *backbone.added):  # the head, and what a surgery added, always train
        params[name].requires_grad_(True)

    bn_names = frozen_bn_modules(backbone, plan) if plan.frozen else []
    if plan.bn_policy == "eval":
        for name in bn_names:
            backbone.model.get_submodule(name).register_forward_pre_hook(_force_eval)
    elif plan.bn_policy == "frozen" and bn_names:
        timm = import_timm()
        # FrozenBatchNorm keeps its affine weights as buffers: they stay frozen even if a
        # phase unfreezes their unit later.
        timm.utils.freeze(backbone.model, submodules=bn_names, include_bn_running_stats=True)


def unit_groups(backbone: Backbone, plan: FreezePlan, units: Iterable[str], lr: float, weight_decay: float) -> list[dict]:
    """Optimizer groups for the trainable parameters of ``units``, one per LR multiplier.

    Each group records its ``initial_lr`` so the LR schedule can rescale every group, including
    groups added later when a phase unfreezes units.
    """
    params = dict(backbone.model.named_parameters())
    wanted = set(units)
    per_unit = plan.controller is not None  # an adaptive plan may rescale any unit's LR later: a group per unit
    groups: dict[object, dict] = {}
    for unit in backbone.units:
        if unit.name not in wanted:
            continue
        mult = float(plan.lr_mult.get(unit.name, 1.0))
        names = unit_trainable_params(backbone, plan, [unit.name])
        group = groups.setdefault(unit.name if per_unit else mult, {
            "params": [], "lr": lr * mult, "initial_lr": lr * mult, "weight_decay": weight_decay, "units": [],
            "name": f"unit {unit.name}" if per_unit else f"backbone x{mult:g}"})
        group["params"].extend(params[n] for n in names if n in params)
        group["units"].append(unit.name)
    return [g for g in groups.values() if g["params"]]


def param_groups(backbone: Backbone, plan: FreezePlan, lr: float, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer groups holding only trainable parameters (frozen ones never see momentum or decay)."""
    params = dict(backbone.model.named_parameters())
    groups = unit_groups(backbone, plan, plan.trainable, lr, weight_decay)
    if backbone.added:
        added_lr = lr * plan.added_lr_mult
        groups.append({"params": [params[p] for p in backbone.added], "lr": added_lr, "initial_lr": added_lr,
                       "weight_decay": weight_decay, "name": "added by surgery"})
    head = [params[p] for p in backbone.head.params]
    head_lr = lr * plan.head_lr_mult
    groups.append({"params": head, "lr": head_lr, "initial_lr": head_lr, "weight_decay": weight_decay, "name": "head"})
    return groups
