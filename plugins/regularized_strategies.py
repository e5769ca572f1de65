"""Fine-tuning that limits how far the backbone moves: bitfit (biases only) and l2_sp."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from freezebench import hookimpl
from freezebench.strategy import FreezePlan, InvalidParams, StrategyParam, plan_from_frozen


@dataclass(frozen=True)
class BitFit:
    name: str = "bitfit"
    colour: str = "#ff7f0e"  # the same colour in every figure
    summary: str = "only the biases of the backbone train (BitFit), plus the head"
    params: tuple[StrategyParam, ...] = ()
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        return plan_from_frozen(units, (), params, param_filter="bias")


@dataclass(frozen=True)
class L2SP:
    name: str = "l2_sp"
    colour: str = "#393b79"  # the same colour in every figure
    summary: str = "fine-tune everything with a penalty alpha/2 ||w - w_pretrained||^2 (L2-SP)"
    params: tuple[StrategyParam, ...] = (StrategyParam("alpha", "float", "strength of the pull toward the pretrained weights", default=0.01),)
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        alpha = float(params["alpha"])
        if alpha < 0:
            raise InvalidParams(f"alpha must be >= 0, got {alpha}")
        return plan_from_frozen(units, (), params, l2_sp=alpha)


@hookimpl
def register_strategies(register):
    register(BitFit())
    register(L2SP())
