"""Freeze strategies: the protocol plugins implement, and the plan they return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

BN_POLICIES = ("eval", "frozen", "train")


@dataclass(frozen=True)
class StrategyParam:
    """A parameter a strategy reads from the trial (searchable from benchmarks.toml).

    kind "unit": an integer freeze point 0..n_units over the backbone's units;
    "int"/"float": a number; "choice": one of ``choices``.
    """

    name: str
    kind: str
    help: str = ""
    default: Any = None
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class FreezePlan:
    """Which units train, at which LR multiplier, and how BatchNorm in frozen units behaves.

    The new classification head always trains, at ``head_lr_mult`` times the base LR.
    """

    trainable: tuple[str, ...]
    frozen: tuple[str, ...]
    head_lr_mult: float = 10.0
    bn_policy: str = "eval"
    pretrained: bool = True
    lr_mult: Mapping[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "trainable_units": list(self.trainable),
            "frozen_units": list(self.frozen),
            "head_lr_mult": self.head_lr_mult,
            "bn_policy": self.bn_policy,
            "pretrained": self.pretrained,
            "lr_mult": dict(self.lr_mult),
        }


class Strategy(Protocol):
    name: str
    summary: str
    params: tuple[StrategyParam, ...]
    pretrained: bool

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan: ...


def plan_from_frozen(
    units: Sequence[str], frozen: set[str] | Sequence[str], params: Mapping[str, Any], *, pretrained: bool = True
) -> FreezePlan:
    """Build a plan from the set of frozen unit names, taking head LR and BN policy from the trial."""
    frozen = set(frozen)
    return FreezePlan(
        trainable=tuple(u for u in units if u not in frozen),
        frozen=tuple(u for u in units if u in frozen),
        head_lr_mult=float(params.get("head_lr_mult", 10.0)),
        bn_policy=str(params.get("bn_policy", "eval")),
        pretrained=pretrained,
    )
