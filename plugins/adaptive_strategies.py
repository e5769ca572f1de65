"""Strategies that decide during training (a plan's ``controller``, asked after every epoch with each
unit's gradient and weight statistics and the epoch's record):

- ``autofreeze`` (after Liu et al. 2021, "AutoFreeze"): everything trains at first; after each epoch,
  the leading units (from the input) whose gradient norm changed by less than ``threshold`` (relative
  to the previous epoch) are frozen, front to back, never the last unit. Frozen units stay frozen, and
  (as in AutoFreeze) the frozen prefix is computed once per image and cached from the next epoch on.
- ``auto_rgn`` (after Lee et al., ICLR 2023, "Surgical fine-tuning", Auto-RGN): everything trains; after
  each epoch, each unit's LR multiplier becomes its relative gradient norm (gradient norm over weight
  norm) divided by the largest one, so the units whose weights the gradient moves most, relatively,
  train fastest.
- ``unfreeze_on_plateau``: gradual unfreezing driven by the validation loss instead of a fixed epoch:
  the head trains first; whenever the validation loss has not improved for ``patience`` epochs, the
  next unit from the output side joins.

Every decision is recorded with the trial (``unfreeze_events.json``, and ``trainable_units`` per epoch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from freezebench import hookimpl
from freezebench.strategy import Decision, FreezePlan, InvalidParams, StrategyParam, UnitStats, plan_from_frozen


@dataclass
class _AutoFreeze:
    units: tuple[str, ...]
    threshold: float
    previous: dict[str, float] = field(default_factory=dict)
    never_unfreezes = True  # frozen units stay frozen: the frozen prefix is cached from the next epoch on

    def after_epoch(self, epoch: int, stats: Mapping[str, UnitStats], record: Mapping[str, float]) -> Decision | None:
        freeze = []
        for unit in self.units[:-1]:  # front to back; the last unit always trains
            s = stats[unit]
            if not s.trainable:
                continue
            before = self.previous.get(unit)
            if before is None or before <= 0 or abs(s.grad_norm - before) / before >= self.threshold:
                break
            freeze.append(unit)
        self.previous = {u: s.grad_norm for u, s in stats.items() if s.trainable}
        if not freeze:
            return None
        return Decision(freeze=tuple(freeze), reason=f"gradient norm changed by less than {self.threshold:g} of its value")


@dataclass(frozen=True)
class AutoFreeze:
    name: str = "autofreeze"
    colour: str = "#e377c2"
    summary: str = "everything trains; leading units whose gradient norm settles are frozen during training (AutoFreeze)"
    params: tuple[StrategyParam, ...] = (
        StrategyParam("threshold", "float", "relative change of a unit's gradient norm between epochs below which it freezes",
                      default=0.1),
    )
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        threshold = float(params["threshold"])
        if threshold < 0:
            raise InvalidParams(f"threshold must be >= 0, got {threshold}")
        return plan_from_frozen(units, (), params, controller=_AutoFreeze(tuple(units), threshold))


@dataclass
class _AutoRGN:
    def after_epoch(self, epoch: int, stats: Mapping[str, UnitStats], record: Mapping[str, float]) -> Decision | None:
        rgn = {u: s.grad_norm / s.weight_norm for u, s in stats.items() if s.trainable and s.weight_norm > 0}
        top = max(rgn.values(), default=0.0)
        if top <= 0:
            return None
        return Decision(lr_mult={u: v / top for u, v in rgn.items()}, reason="relative gradient norm / the largest")


@dataclass(frozen=True)
class AutoRGN:
    name: str = "auto_rgn"
    colour: str = "#7f7f7f"
    summary: str = "everything trains, each unit at an LR scaled by its relative gradient norm (surgical fine-tuning's Auto-RGN)"
    params: tuple[StrategyParam, ...] = ()
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        return plan_from_frozen(units, (), params, controller=_AutoRGN())


@dataclass
class _OnPlateau:
    frozen: list[str]  # still frozen, input side first
    patience: int
    best: float = float("inf")
    waited: int = 0

    def after_epoch(self, epoch: int, stats: Mapping[str, UnitStats], record: Mapping[str, float]) -> Decision | None:
        loss = record.get("val_loss", float("inf"))
        if loss < self.best:
            self.best, self.waited = loss, 0
            return None
        self.waited += 1
        if self.waited <= self.patience or not self.frozen:
            return None
        self.waited, self.best = 0, loss
        unit = self.frozen.pop()
        return Decision(unfreeze=(unit,), reason=f"validation loss did not improve for {self.patience + 1} epoch(s)")


@dataclass(frozen=True)
class UnfreezeOnPlateau:
    name: str = "unfreeze_on_plateau"
    colour: str = "#aec7e8"
    summary: str = "the head first; the next unit from the output joins whenever the validation loss stops improving"
    params: tuple[StrategyParam, ...] = (
        StrategyParam("patience", "int", "epochs without a better validation loss before the next unit joins", default=0),
    )
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        patience = int(params["patience"])
        if patience < 0:
            raise InvalidParams(f"patience must be >= 0, got {patience}")
        return plan_from_frozen(units, units, params, controller=_OnPlateau(list(units), patience))


@hookimpl
def register_strategies(register):
    register(AutoFreeze())
    register(AutoRGN())
    register(UnfreezeOnPlateau())
