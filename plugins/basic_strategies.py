"""Which units train, fixed for the whole trial: linear_probe, full, scratch, freeze_to,
train_window, last_blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from freezebench import hookimpl
from freezebench.strategy import FreezePlan, InvalidParams, StrategyParam, plan_from_frozen


@dataclass(frozen=True)
class LinearProbe:
    name: str = "linear_probe"
    colour: str = "#1f77b4"  # the same colour in every figure
    summary: str = "pretrained backbone frozen; only the new head trains"
    params: tuple[StrategyParam, ...] = ()
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        return plan_from_frozen(units, units, params)


@dataclass(frozen=True)
class Full:
    name: str = "full"
    colour: str = "#d62728"  # the same colour in every figure
    summary: str = "fine-tune every layer from the pretrained weights"
    params: tuple[StrategyParam, ...] = ()
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        return plan_from_frozen(units, (), params)


@dataclass(frozen=True)
class Scratch:
    name: str = "scratch"
    colour: str = "#7f7f7f"  # the same colour in every figure
    summary: str = "same architecture from random weights, every layer trains"
    params: tuple[StrategyParam, ...] = ()
    pretrained: bool = False

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        return plan_from_frozen(units, (), params, pretrained=False)


@dataclass(frozen=True)
class FreezeTo:
    name: str = "freeze_to"
    colour: str = "#2ca02c"  # the same colour in every figure
    summary: str = "first k units (input side) frozen, the rest fine-tuned (paper 002's sweep)"
    params: tuple[StrategyParam, ...] = (
        StrategyParam("k", "unit", "number of units frozen, counted from the input (0..n_units)"),
    )
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        return plan_from_frozen(units, units[: int(params["k"])], params)


@dataclass(frozen=True)
class TrainWindow:
    name: str = "train_window"
    colour: str = "#9467bd"  # the same colour in every figure
    summary: str = "only units in a window train, plus the head (paper 004, surgical fine-tuning)"
    params: tuple[StrategyParam, ...] = (
        StrategyParam("window", "window", 'units that train, "A..B" inclusive by name or index, or "all"', default=None),
    )
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        start, end = params["window"]
        return plan_from_frozen(units, [u for i, u in enumerate(units) if not start <= i < end], params)


@dataclass(frozen=True)
class TrainRange:
    name: str = "train_range"
    colour: str = "#8c564b"  # the same colour in every figure
    summary: str = "units a..b-1 train, plus the head: train_window with searchable integer bounds"
    params: tuple[StrategyParam, ...] = (
        StrategyParam("a", "unit", "first trainable unit (0..n_units)"),
        StrategyParam("b", "unit", "one past the last trainable unit (a..n_units)", after="a"),
    )
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        a, b = int(params["a"]), int(params["b"])
        if b < a:
            raise InvalidParams(f"b={b} is below a={a}")
        return plan_from_frozen(units, [u for i, u in enumerate(units) if not a <= i < b], params)


@dataclass(frozen=True)
class LastBlocks:
    name: str = "last_blocks"
    colour: str = "#e377c2"  # the same colour in every figure
    summary: str = "only the last n units train, plus the head (paper 003: retrain the last conv block)"
    params: tuple[StrategyParam, ...] = (StrategyParam("n", "unit", "number of units that train, from the output side"),)
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        n = int(params["n"])
        return plan_from_frozen(units, units[: len(units) - n], params)


@hookimpl
def register_strategies(register):
    for strategy in (LinearProbe(), Full(), Scratch(), FreezeTo(), TrainWindow(), TrainRange(), LastBlocks()):
        register(strategy)
