"""Fine-tuning that limits how far the backbone moves: bitfit (biases only, a named selector) and l2_sp
(a regularizer: the loss term is this plugin's, the core only adds it)."""

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


class PullToPretrained:
    """L2-SP (Li et al. 2018): alpha/2 * sum ||w - w_pretrained||^2 over the backbone weights that train.
    The pretrained values are kept the first time a parameter is seen training, before its first update
    (a unit unfrozen later is still pretrained then)."""

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.reference: dict[str, Any] = {}

    def describe(self) -> str:
        return f"L2-SP alpha={self.alpha:g}"

    def __call__(self, trainable):
        import torch

        if not trainable or self.alpha == 0:
            return None
        for name, p in trainable.items():
            if name not in self.reference:
                self.reference[name] = p.detach().clone()
        terms = [((p - self.reference[name]) ** 2).sum() for name, p in trainable.items()]
        return 0.5 * self.alpha * torch.stack(terms).sum()


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
        return plan_from_frozen(units, (), params, regularizer=PullToPretrained(alpha))


@hookimpl
def register_strategies(register):
    register(BitFit())
    register(L2SP())
