"""Strategies that choose parameters by what they are, not only by unit (the selectors of
``freezebench.strategy.SELECTORS``): the first ``k`` units stay frozen, and in the units after them only
the selected parameters train, plus the head.

- ``norm_tuning``: the affine weights and biases of the normalisation layers (Mudrakarta et al., ICLR
  2019, "K for the price of 1"; also Frankle et al. 2021 on training BatchNorm alone);
- ``depthwise_tuning``: the depthwise convolutions of MobileNet-style blocks, the per-channel spatial
  filters that hold few parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from freezebench import hookimpl
from freezebench.strategy import FreezePlan, StrategyParam, plan_from_frozen

_K = StrategyParam("k", "unit", "number of units frozen entirely, counted from the input (0..n_units)", default=0)


@dataclass(frozen=True)
class SelectorTuning:
    """The first ``k`` units frozen; in the others, only the parameters ``selector`` picks train."""

    name: str
    selector: str
    summary: str
    colour: str
    params: tuple[StrategyParam, ...] = (_K,)
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        return plan_from_frozen(units, units[: int(params["k"])], params, param_filter=self.selector)


NORM_TUNING = SelectorTuning("norm_tuning", "norm", "only the normalisation layers' affine weights and biases train "
                             "(after the first k units), plus the head", "#17becf")
DEPTHWISE_TUNING = SelectorTuning("depthwise_tuning", "depthwise", "only the depthwise convolutions train (after the "
                                  "first k units), plus the head", "#bcbd22")


@hookimpl
def register_strategies(register):
    register(NORM_TUNING)
    register(DEPTHWISE_TUNING)
