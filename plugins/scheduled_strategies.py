"""Strategies whose frozen set changes during training: gradual_unfreeze and lp_ft.

Units unfrozen in a later epoch join the optimizer (their own parameter groups) and the LR
schedule at that epoch; BatchNorm in them keeps the trial's policy (with "eval", inference
mode, as Keras does after unfreezing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from freezebench import hookimpl
from freezebench.strategy import FreezePlan, InvalidParams, Phase, StrategyParam, plan_from_frozen


@dataclass(frozen=True)
class GradualUnfreeze:
    name: str = "gradual_unfreeze"
    colour: str = "#bcbd22"  # the same colour in every figure
    summary: str = "start with the head only; unfreeze one more unit from the top every `every` epochs"
    params: tuple[StrategyParam, ...] = (
        StrategyParam("every", "int", "epochs between two unfreezing steps", default=1),
        StrategyParam("keep_frozen", "unit", "units at the input side that are never unfrozen", default=0),
    )
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        every, keep = int(params["every"]), int(params["keep_frozen"])
        if every < 1:
            raise InvalidParams(f"every must be >= 1, got {every}")
        order = list(reversed(units[keep:]))  # from the output side
        phases = tuple(Phase(epoch=1 + every * (i + 1), unfreeze=(u,)) for i, u in enumerate(order))
        return plan_from_frozen(units, units, params, phases=phases)


@dataclass(frozen=True)
class LinearProbeThenFineTune:
    name: str = "lp_ft"
    colour: str = "#17becf"  # the same colour in every figure
    summary: str = "linear probe for lp_epochs, then fine-tune everything at ft_lr_scale x the LR"
    params: tuple[StrategyParam, ...] = (
        StrategyParam("lp_epochs", "int", "epochs of linear probing before fine-tuning", default=1),
        StrategyParam("ft_lr_scale", "float", "LR multiplier during fine-tuning (all groups)", default=0.1),
    )
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        lp = int(params["lp_epochs"])
        scale = float(params["ft_lr_scale"])
        if lp < 0 or scale <= 0:
            raise InvalidParams(f"need lp_epochs >= 0 and ft_lr_scale > 0, got {lp}, {scale}")
        phases = (Phase(epoch=lp + 1, unfreeze=tuple(units), lr_scale=scale),)
        return plan_from_frozen(units, units, params, phases=phases)


@hookimpl
def register_strategies(register):
    register(GradualUnfreeze())
    register(LinearProbeThenFineTune())
