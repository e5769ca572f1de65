"""Carry out a freeze plan during training: phases that unfreeze units (their parameters join the
optimizer and the LR schedule), the LR schedule itself, the plan's regularizer (L2-SP), and an adaptive plan's
controller (per-unit statistics each epoch; its decisions applied and recorded)."""

from __future__ import annotations

import math

import torch

from ..backbone import Backbone
from ..records import LR_SCHEDULES
from ..strategy import Decision, FreezePlan, UnitStats
from .freeze import keep_bn_in_eval, unit_groups, unit_trainable_params


def schedule_factor(schedule: str, epoch: int, epochs: int, step: int = 10, gamma: float = 0.1) -> float:
    """LR multiplier for 1-based ``epoch``: constant, step (x gamma every ``step`` epochs), or cosine."""
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return gamma ** ((epoch - 1) // max(step, 1))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (epoch - 1) / max(epochs, 1)))
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, not {schedule!r}")


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor | float:
    """The L2 norm of several tensors taken together (0 for none)."""
    if not tensors:
        return 0.0
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.detach().float()) for t in tensors]))


class PlanExecutor:
    """Applies the plan's phases and the LR schedule at each epoch start; computes penalties.

    The LR schedule is applied by hand to every group (``initial_lr`` x phase scale x schedule
    factor) because torch's schedulers fix their groups when they are built, and groups added
    later would silently miss the schedule.
    """

    def __init__(self, backbone: Backbone, plan: FreezePlan, optimizer: torch.optim.Optimizer, *, lr: float,
                 weight_decay: float, epochs: int, schedule: str = "constant", step: int = 10, gamma: float = 0.1):
        self.backbone, self.plan, self.optimizer = backbone, plan, optimizer
        self.lr, self.weight_decay, self.epochs = lr, weight_decay, epochs
        self.schedule, self.step, self.gamma = schedule, step, gamma
        self.phase_scale = 1.0
        self.events: list[dict] = []
        if plan.regularizer is not None:  # the backbone's own parameters, looked up once
            params = dict(backbone.model.named_parameters())
            self._backbone_params = {p: params[p] for u in backbone.units for p in u.params}
        self.controller = plan.controller
        if self.controller is not None:
            self.lr_mult = {u: float(plan.lr_mult.get(u, 1.0)) for u in backbone.unit_names()}
            self._selected = {u: unit_trainable_params(backbone, plan, [u]) for u in backbone.unit_names()}
            params = dict(backbone.model.named_parameters())
            self._tensors = {u: [params[n] for n in names] for u, names in self._selected.items()}  # looked up once
            self._grad_norm: dict[str, torch.Tensor | float] = {u: 0.0 for u in self._selected}
            self._steps, self._start = 0, {}
            self._bn_hooks: dict[str, list] = {}

    def begin_epoch(self, epoch: int) -> None:
        params = dict(self.backbone.model.named_parameters())
        for phase in self.plan.phases:
            if phase.epoch != epoch:
                continue
            names = [n for n in unit_trainable_params(self.backbone, self.plan, phase.unfreeze)
                     if n in params and not params[n].requires_grad]
            for n in names:
                params[n].requires_grad_(True)
            new_ids = {id(params[n]) for n in names}
            for group in unit_groups(self.backbone, self.plan, phase.unfreeze, self.lr, self.weight_decay):
                group["params"] = [p for p in group["params"] if id(p) in new_ids]
                if group["params"]:
                    self.optimizer.add_param_group(group)
            self.phase_scale = phase.lr_scale
            self.events.append({"epoch": epoch, "unfrozen_units": list(phase.unfreeze), "new_params": len(names)})
        factor = self.phase_scale * schedule_factor(self.schedule, epoch, self.epochs, self.step, self.gamma)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        if self.controller is not None:
            self._start = {n: params[n].detach().clone() for names in self._selected.values() for n in names}
            self._grad_norm = {u: 0.0 for u in self._selected}
            self._steps = 0

    def after_backward(self) -> None:
        """An adaptive plan's gradient statistics: each unit's gradient norm, summed over the epoch's steps
        (on the device: read once per epoch, not once per step)."""
        if self.controller is None:
            return
        with torch.no_grad():
            for unit, tensors in self._tensors.items():
                grads = [t.grad for t in tensors if t.grad is not None]
                if grads:
                    self._grad_norm[unit] = self._grad_norm[unit] + _norm(grads)
        self._steps += 1

    def end_epoch(self, epoch: int, record: dict[str, float]) -> None:
        """Ask the controller, apply its decision from the next epoch on, and record it (in ``events``, and
        ``trainable_units`` in the epoch's record)."""
        if self.controller is None:
            return
        params = dict(self.backbone.model.named_parameters())
        stats = {}
        with torch.no_grad():
            for unit, names in self._selected.items():
                tensors = self._tensors[unit]
                stats[unit] = UnitStats(
                    unit, any(t.requires_grad for t in tensors), float(self._grad_norm[unit]) / max(self._steps, 1),
                    float(_norm(tensors)), float(_norm([params[n] - self._start[n] for n in names])), self.lr_mult[unit])
        decision = self.controller.after_epoch(epoch, stats, dict(record)) or Decision()
        unknown = (set(decision.freeze) | set(decision.unfreeze) | set(decision.lr_mult)) - set(self._selected)
        if unknown:
            raise ValueError(f"the controller named units {sorted(unknown)} that backbone {self.backbone.name} lacks")
        froze = [u for u in decision.freeze if stats[u].trainable]
        for unit in froze:
            self._freeze(unit, params)
        unfroze = [u for u in decision.unfreeze if not stats[u].trainable and u not in froze]
        if unfroze and self.plan.only_freezes:
            raise ValueError(f"the controller says it never unfreezes, but unfroze {unfroze} (its frozen units may be cached)")
        for unit in unfroze:
            self._unfreeze(unit, params)
        rescaled = {}
        for unit, mult in decision.lr_mult.items():
            self.lr_mult[unit] = rescaled[unit] = float(mult)
            for group in self.optimizer.param_groups:
                if group.get("units") == [unit]:
                    group["initial_lr"] = self.lr * float(mult)
        record["trainable_units"] = float(sum(any(t.requires_grad for t in tensors) for tensors in self._tensors.values()))
        if froze or unfroze or rescaled:
            self.events.append({"epoch": epoch, "froze": froze, "unfroze": unfroze, "lr_mult": rescaled,
                                "reason": decision.reason, "from_epoch": epoch + 1})

    def frozen_from_now_on(self, epoch: int) -> set[str]:
        """Units frozen after ``epoch`` that stay frozen to the end: all their parameters out of training, no
        later phase unfreezing them, and a controller that never unfreezes (or none)."""
        if not self.plan.only_freezes:
            return set()
        later = {u for p in self.plan.phases if p.epoch > epoch for u in p.unfreeze}
        params = dict(self.backbone.model.named_parameters())
        return {u.name for u in self.backbone.units
                if u.name not in later and not any(params[n].requires_grad for n in u.params)}

    def _freeze(self, unit: str, params: dict) -> None:
        """``unit`` leaves the optimizer (with its momentum) and its BatchNorm statistics stop (unless bn_policy
        is "train"): from now on it is bit-identical."""
        members = [params[n] for n in self._selected[unit]]
        ids = {id(p) for p in members}
        for p in members:
            p.requires_grad_(False)
            p.grad = None
            self.optimizer.state.pop(p, None)
        for group in self.optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        if self.plan.bn_policy != "train" and unit not in self._bn_hooks:
            self._bn_hooks[unit] = keep_bn_in_eval(self.backbone, unit)

    def _unfreeze(self, unit: str, params: dict) -> None:
        names = [n for n in self._selected[unit] if not params[n].requires_grad]
        for n in names:
            params[n].requires_grad_(True)
        new_ids = {id(params[n]) for n in names}
        for group in unit_groups(self.backbone, self.plan, [unit], self.lr, self.weight_decay):
            group["params"] = [p for p in group["params"] if id(p) in new_ids]
            group["initial_lr"] = group["lr"] = self.lr * self.lr_mult[unit]
            if group["params"]:
                self.optimizer.add_param_group(group)

    def penalty(self) -> torch.Tensor | None:
        """The plan's regularizer over the backbone parameters that train now (None without one)."""
        if self.plan.regularizer is None:
            return None
        return self.plan.regularizer({n: p for n, p in self._backbone_params.items() if p.requires_grad})
