"""The basic freeze strategies: linear_probe, full, scratch, freeze_to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from freezebench.hookspecs import hookimpl
from freezebench.strategy import FreezePlan, StrategyParam, plan_from_frozen


@dataclass(frozen=True)
class LinearProbe:
    name: str = "linear_probe"
    summary: str = "pretrained backbone frozen; only the new head trains"
    params: tuple[StrategyParam, ...] = ()
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        return plan_from_frozen(units, units, params)


@dataclass(frozen=True)
class Full:
    name: str = "full"
    summary: str = "fine-tune every layer from the pretrained weights"
    params: tuple[StrategyParam, ...] = ()
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        return plan_from_frozen(units, (), params)


@dataclass(frozen=True)
class Scratch:
    name: str = "scratch"
    summary: str = "same architecture from random weights, every layer trains"
    params: tuple[StrategyParam, ...] = ()
    pretrained: bool = False

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        return plan_from_frozen(units, (), params, pretrained=False)


@dataclass(frozen=True)
class FreezeTo:
    name: str = "freeze_to"
    summary: str = "first k units (input side) frozen, the rest fine-tuned"
    params: tuple[StrategyParam, ...] = (
        StrategyParam("k", "unit", "number of units frozen, counted from the input (0..n_units)"),
    )
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        return plan_from_frozen(units, units[: int(params["k"])], params)


@hookimpl
def register_strategies(register):
    for strategy in (LinearProbe(), Full(), Scratch(), FreezeTo()):
        register(strategy)
