"""Carry out a freeze plan during training: phases that unfreeze units (their parameters join the
optimizer and the LR schedule), the LR schedule itself, and the L2-SP penalty."""

from __future__ import annotations

import math

import torch

from ..backbone import Backbone
from ..records import LR_SCHEDULES
from ..strategy import FreezePlan
from .freeze import unit_groups, unit_trainable_params


def schedule_factor(schedule: str, epoch: int, epochs: int, step: int = 10, gamma: float = 0.1) -> float:
    """LR multiplier for 1-based ``epoch``: constant, step (x gamma every ``step`` epochs), or cosine."""
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return gamma ** ((epoch - 1) // max(step, 1))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (epoch - 1) / max(epochs, 1)))
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, not {schedule!r}")


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
        self._reference: dict[str, torch.Tensor] = {}
        if plan.l2_sp > 0:
            every = unit_trainable_params(backbone, plan, backbone.unit_names())
            params = dict(backbone.model.named_parameters())
            self._reference = {n: params[n].detach().clone() for n in every if n in params}

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

    def penalty(self) -> torch.Tensor | None:
        """L2-SP: alpha/2 * sum ||w - w_pretrained||^2 over backbone weights that train now."""
        if not self._reference:
            return None
        params = dict(self.backbone.model.named_parameters())
        terms = [((params[n] - ref) ** 2).sum() for n, ref in self._reference.items() if params[n].requires_grad]
        if not terms:
            return None
        return 0.5 * self.plan.l2_sp * torch.stack(terms).sum()
