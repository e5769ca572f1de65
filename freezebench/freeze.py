"""Apply a freeze plan to a backbone: requires_grad, BatchNorm policy, optimizer parameter groups."""

from __future__ import annotations

from torch import nn

from .backbone import Backbone
from .strategy import BN_POLICIES, FreezePlan
from .torch_compat import import_timm

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def _force_eval(module: nn.Module, _inputs) -> None:
    # A parent's .train() resets child.training; re-assert inference mode on every call.
    module.training = False


def frozen_bn_modules(backbone: Backbone, plan: FreezePlan) -> list[str]:
    """Names of BatchNorm modules whose parameters all lie in frozen units."""
    frozen_params = {p for u in backbone.units if u.name in plan.frozen for p in u.params}
    out = []
    for name, module in backbone.model.named_modules():
        if isinstance(module, _BN_TYPES):
            own = [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
            if own and all(p in frozen_params for p in own):
                out.append(name)
    return out


def apply_plan(backbone: Backbone, plan: FreezePlan) -> None:
    """Freeze the plan's frozen units in place (the head always trains)."""
    if plan.bn_policy not in BN_POLICIES:
        raise ValueError(f"bn_policy must be one of {BN_POLICIES}, not {plan.bn_policy!r}")
    unknown = set(plan.frozen) | set(plan.trainable)
    unknown -= set(backbone.unit_names())
    if unknown:
        raise ValueError(f"plan names units {sorted(unknown)} that backbone {backbone.name} lacks")
    params = dict(backbone.model.named_parameters())
    frozen_units = [u for u in backbone.units if u.name in plan.frozen]
    for unit in backbone.units:
        trainable = unit.name not in plan.frozen
        for p in unit.params:
            params[p].requires_grad_(trainable)
    for p in backbone.head.params:
        params[p].requires_grad_(True)

    bn_names = frozen_bn_modules(backbone, plan) if frozen_units else []
    if plan.bn_policy == "eval":
        for name in bn_names:
            backbone.model.get_submodule(name).register_forward_pre_hook(_force_eval)
    elif plan.bn_policy == "frozen" and bn_names:
        timm = import_timm()
        timm.utils.freeze(backbone.model, submodules=bn_names, include_bn_running_stats=True)


def param_groups(backbone: Backbone, plan: FreezePlan, lr: float, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer groups holding only trainable parameters (frozen ones never see momentum or decay)."""
    params = dict(backbone.model.named_parameters())
    groups: dict[float, list] = {}
    for unit in backbone.units:
        if unit.name in plan.frozen:
            continue
        mult = float(plan.lr_mult.get(unit.name, 1.0))
        groups.setdefault(mult, []).extend(params[p] for p in unit.params if p in params and params[p].requires_grad)
    out = [
        {"params": ps, "lr": lr * mult, "weight_decay": weight_decay, "name": f"backbone x{mult:g}"}
        for mult, ps in groups.items()
        if ps
    ]
    head = [params[p] for p in backbone.head.params]
    out.append({"params": head, "lr": lr * plan.head_lr_mult, "weight_decay": weight_decay, "name": "head"})
    return out
