"""freeze_fraction: freeze the first ``fraction`` of a backbone's units (rounded down).

A complete third-party freezebench plugin: install it with ``pip install .`` and
``freezebench list strategies`` shows it; a suite can search ``fraction``.
"""

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from freezebench.hookspecs import hookimpl
from freezebench.strategy import FreezePlan, StrategyParam, plan_from_frozen


@dataclass(frozen=True)
class FreezeFraction:
    name: str = "freeze_fraction"
    summary: str = "freeze the first fraction of the units (0 = full fine-tune, 1 = linear probe)"
    params: tuple = (StrategyParam("fraction", "float", "share of units frozen, from the input", default=0.5),)
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        fraction = float(params["fraction"])
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
        k = int(fraction * len(units))
        return plan_from_frozen(units, units[:k], params)


@hookimpl
def register_strategies(register):
    register(FreezeFraction())
