"""Freeze strategies: the protocol plugins implement, and the plan they return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

BN_POLICIES = ("eval", "frozen", "train")
PARAM_FILTERS = ("all", "bias")


@dataclass(frozen=True)
class StrategyParam:
    """A parameter a strategy reads from the trial (set or searched in benchmarks.toml).

    kinds: "unit" (an index 0..n_units into the backbone's units, or a unit name), "window"
    (a string "A..B": units A to B inclusive, by name or index), "int", "float", "choice".
    ``after``: for "unit" params, the name of another unit param this one must not be below.
    """

    name: str
    kind: str
    help: str = ""
    default: Any = None
    choices: tuple[Any, ...] = ()
    after: str | None = None


@dataclass(frozen=True)
class Phase:
    """From 1-based ``epoch`` on, ``unfreeze`` these units too and scale every LR by ``lr_scale``."""

    epoch: int
    unfreeze: tuple[str, ...] = ()
    lr_scale: float = 1.0


@dataclass(frozen=True)
class FreezePlan:
    """Which units train, at which LR multiplier, and how BatchNorm in frozen units behaves.

    ``frozen`` units start frozen; ``phases`` may unfreeze some of them later (gradual unfreezing,
    LP-FT). The new classification head always trains, at ``head_lr_mult`` x the base LR.
    ``param_filter="bias"`` trains only the biases of trainable units (BitFit). ``l2_sp`` > 0
    adds alpha/2 * ||w - w_pretrained||^2 over trainable backbone weights to the loss (L2-SP).
    """

    trainable: tuple[str, ...]
    frozen: tuple[str, ...]
    head_lr_mult: float = 10.0
    bn_policy: str = "eval"
    pretrained: bool = True
    lr_mult: Mapping[str, float] = field(default_factory=dict)
    phases: tuple[Phase, ...] = ()
    param_filter: str = "all"
    l2_sp: float = 0.0

    @property
    def never_trained(self) -> tuple[str, ...]:
        """Units frozen for the whole trial."""
        later = {u for p in self.phases for u in p.unfreeze}
        return tuple(u for u in self.frozen if u not in later)

    def as_dict(self) -> dict[str, Any]:
        return {
            "trainable_units": list(self.trainable),
            "frozen_units": list(self.frozen),
            "never_trained_units": list(self.never_trained),
            "head_lr_mult": self.head_lr_mult,
            "bn_policy": self.bn_policy,
            "pretrained": self.pretrained,
            "lr_mult": dict(self.lr_mult),
            "phases": [{"epoch": p.epoch, "unfreeze": list(p.unfreeze), "lr_scale": p.lr_scale} for p in self.phases],
            "param_filter": self.param_filter,
            "l2_sp": self.l2_sp,
        }


class Strategy(Protocol):
    name: str
    summary: str
    params: tuple[StrategyParam, ...]
    pretrained: bool

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan: ...


class InvalidParams(ValueError):
    """A strategy got parameter values it cannot plan with (reported as a user error)."""


def plan_from_frozen(
    units: Sequence[str],
    frozen: set[str] | Sequence[str],
    params: Mapping[str, Any],
    *,
    pretrained: bool = True,
    **extra: Any,
) -> FreezePlan:
    """Build a plan from the set of frozen unit names, taking head LR and BN policy from the trial."""
    frozen = set(frozen)
    return FreezePlan(
        trainable=tuple(u for u in units if u not in frozen),
        frozen=tuple(u for u in units if u in frozen),
        head_lr_mult=float(params.get("head_lr_mult", 10.0)),
        bn_policy=str(params.get("bn_policy", "eval")),
        pretrained=pretrained,
        **extra,
    )
