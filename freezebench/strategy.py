"""Freeze strategies: the protocol plugins implement, and the plan they return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, Union

from .errors import UserError
from .records import BN_POLICIES, DEFAULTS

__all__ = ["BN_POLICIES", "REFERENCES", "PARAM_FILTERS", "SELECTORS", "ParamInfo", "Selector", "selector", "UnitStats", "Decision",
           "Controller", "Surgery", "Regularizer", "StrategyParam", "Phase",
           "FreezePlan", "describe_part", "Strategy", "InvalidParams", "plan_from_frozen", "parse_window", "resolve_strategy_params"]


@dataclass(frozen=True)
class ParamInfo:
    """One parameter of a backbone, as a selector sees it: its full name in the model
    ("blocks.1.0.conv_dw.weight"), the module that owns it (a ``torch.nn.Module``), and its unit."""

    name: str
    module: Any
    unit: str

    @property
    def leaf(self) -> str:
        """The parameter's own name in its module: "weight", "bias"."""
        return self.name.rsplit(".", 1)[-1]


Selector = Callable[[ParamInfo], bool]


def _norm(p: ParamInfo) -> bool:
    from torch import nn

    return isinstance(p.module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm))


def _depthwise(p: ParamInfo) -> bool:
    from torch import nn

    m = p.module
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


# The reference strategies every recommendation is compared with, and that a plan may amount to
# (``FreezePlan.amounts_to``): linear probing and full fine-tuning.
REFERENCES = ("linear_probe", "full")

# Named selectors a plan may give as ``param_filter``: which parameters of its trainable units train.
SELECTORS: dict[str, Selector] = {
    "all": lambda p: True,
    "bias": lambda p: p.leaf == "bias",  # BitFit (Ben Zaken et al. 2022)
    "norm": _norm,  # BatchNorm / LayerNorm / GroupNorm affine weights and biases ("K for the price of 1")
    "depthwise": _depthwise,  # the depthwise convolutions of MobileNet-style blocks (weights and biases)
    "head": lambda p: False,  # no backbone parameter: only the new head (and what a surgery added) trains
}
PARAM_FILTERS = tuple(SELECTORS)


def selector(param_filter: "str | Selector") -> Selector:
    """The predicate behind a plan's ``param_filter``: a named selector, or the plan's own callable."""
    if callable(param_filter):
        return param_filter
    if param_filter not in SELECTORS:
        raise ValueError(f"param_filter must be one of {', '.join(SELECTORS)} or a callable(ParamInfo) -> bool, "
                         f"not {param_filter!r}")
    return SELECTORS[param_filter]


@dataclass(frozen=True)
class UnitStats:
    """One unit over one epoch, as a controller sees it. Norms are L2 norms over the unit's parameters
    that train under the plan's selector: ``grad_norm`` the mean over the epoch's steps of the gradient's
    norm (0 for a frozen unit), ``weight_norm`` at the epoch's end, ``update_norm`` of how far the
    weights moved during the epoch."""

    unit: str
    trainable: bool
    grad_norm: float
    weight_norm: float
    update_norm: float
    lr_mult: float


@dataclass(frozen=True)
class Decision:
    """What a controller changes after an epoch, from the next epoch on: units to ``freeze`` (they leave
    the optimizer and stay bit-identical from then on) or ``unfreeze`` (they join it), and new LR
    multipliers (``lr_mult``: unit -> multiple of the base LR). ``reason`` is recorded with it."""

    freeze: tuple[str, ...] = ()
    unfreeze: tuple[str, ...] = ()
    lr_mult: Mapping[str, float] = field(default_factory=dict)
    reason: str = ""

    def __bool__(self) -> bool:
        return bool(self.freeze or self.unfreeze or self.lr_mult)


class Controller(Protocol):
    """Training-time control: a plan's ``controller`` is asked after every epoch, with every unit's
    statistics and the epoch's record (``train_loss``, ``val_loss``, ``val_<metric>``). One controller
    object serves one trial (``plan()`` makes a fresh one).

    A controller that only ever freezes (AutoFreeze) says so with a true ``never_unfreezes`` attribute:
    the leading units it has frozen are then computed once per image and cached from the next epoch on,
    as a static plan's frozen prefix is. Such a controller must not unfreeze a unit later (refused)."""

    def after_epoch(self, epoch: int, stats: Mapping[str, UnitStats], record: Mapping[str, float]) -> Decision | None: ...


class Surgery(Protocol):
    """Model surgery: a plan's ``surgery`` changes the network before training, in place: it wraps
    modules (LoRA around a convolution) or adds new ones (an adapter after a block). ``apply`` gets the
    model and its units (unit name -> the names of its parameters now). Parameters it adds
    always train; the pretrained parameters keep following the plan (a frozen one stays bit-identical,
    even when a wrapper now holds it under a new name). One object serves one trial.

    ``merge`` is called on the trained network before it is exported: fold what was added back into the
    backbone's own modules and return True (the exported model is then the plain backbone), or return
    False to keep the added modules (loading the model then needs the strategy's plugin, which applies
    ``apply`` again before the weights are loaded)."""

    def apply(self, model: Any, units: Mapping[str, Sequence[str]]) -> None: ...

    def merge(self, model: Any) -> bool: ...


class Regularizer(Protocol):
    """A term added to the training loss at every step (L2-SP): called with the backbone parameters
    that train at that step, by name; returns a scalar tensor, or None for no term. One object serves
    one trial; it is first called before the first update, so it may keep the pretrained values then."""

    def __call__(self, trainable: Mapping[str, Any]) -> Any: ...


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
    ``param_filter`` says which parameters of the trainable units train: a named selector of
    ``SELECTORS`` ("all", "bias" for BitFit, "norm", "depthwise", "head") or a callable ``(ParamInfo) -> bool``
    over a parameter's name, owning module and unit. ``controller`` (a ``Controller``) may freeze,
    unfreeze or rescale units after each epoch (adaptive strategies). ``surgery`` (a ``Surgery``) wraps
    or adds modules before training; what it adds trains at ``added_lr_mult`` x the base LR.
    ``regularizer`` (a ``Regularizer``) adds a term to the loss at every step (L2-SP).
    """

    trainable: tuple[str, ...]
    frozen: tuple[str, ...]
    head_lr_mult: float = DEFAULTS["head_lr_mult"]
    bn_policy: str = DEFAULTS["bn_policy"]
    pretrained: bool = True
    lr_mult: Mapping[str, float] = field(default_factory=dict)
    phases: tuple[Phase, ...] = ()
    param_filter: Union[str, Selector] = "all"
    controller: Any = None  # a Controller: decides during training; None for a static plan
    surgery: Any = None  # a Surgery: wraps or adds modules before training
    added_lr_mult: float = 1.0
    regularizer: Any = None  # a Regularizer: a loss term at every step

    @property
    def only_freezes(self) -> bool:
        """Whether a unit, once frozen, stays frozen: no controller, or one that says ``never_unfreezes``
        (its frozen prefix can then be cached from the epoch after it froze it)."""
        return self.controller is None or bool(getattr(self.controller, "never_unfreezes", False))

    @property
    def never_trained(self) -> tuple[str, ...]:
        """Units frozen for the whole trial."""
        later = {u for p in self.phases for u in p.unfreeze}
        return tuple(u for u in self.frozen if u not in later)

    @property
    def amounts_to(self) -> str | None:
        """The reference strategy this plan is, whatever strategy made it (``freeze_to k=0`` is full
        fine-tuning, ``freeze_to k=n`` linear probing), so that a search without the references' own
        strategies still compares with them. ``"linear_probe"``: pretrained, nothing of the backbone ever
        trains (every unit frozen for the whole trial, or only the head selected), nothing added or
        controlled. ``"full"``: pretrained, every parameter trains from the first epoch, nothing added,
        controlled, regularized or rescheduled. None otherwise. LR multipliers are not looked at: a
        suite's ``lr_decay`` applies to the references' own trials too."""
        if not self.pretrained or self.controller is not None or self.surgery is not None:
            return None
        backbone_trains = self.param_filter != "head" and bool(self.trainable or any(p.unfreeze for p in self.phases))
        if not backbone_trains:
            return "linear_probe"
        if not self.frozen and self.param_filter == "all" and not self.phases and self.regularizer is None:
            return "full"
        return None

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
            "param_filter": self.param_filter if isinstance(self.param_filter, str) else
            getattr(self.param_filter, "__qualname__", repr(self.param_filter)),
            "controller": describe_part(self.controller),
            "surgery": describe_part(self.surgery),
            "added_lr_mult": self.added_lr_mult,
            "regularizer": describe_part(self.regularizer),
            "amounts_to": self.amounts_to,
        }


def describe_part(part: Any) -> Any:
    """A plan's controller, surgery or regularizer as recorded: its own ``describe()``, else its class name."""
    if part is None:
        return None
    describe = getattr(part, "describe", None)
    return describe() if callable(describe) else type(part).__name__


class Strategy(Protocol):
    """What a strategy plugin registers. Optional: ``colour`` (a matplotlib colour for this strategy
    in every figure; without one it gets a stable colour from a default palette) and ``unavailable()``
    (why the strategy cannot run here, e.g. an optional dependency missing, or ""; checked before a
    suite writes anything)."""

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
        head_lr_mult=float(params.get("head_lr_mult", DEFAULTS["head_lr_mult"])),
        bn_policy=str(params.get("bn_policy", DEFAULTS["bn_policy"])),
        pretrained=pretrained,
        **extra,
    )


def parse_window(value: Any, units: Sequence[str], backbone: str) -> tuple[int, int]:
    """"A..B" (unit names or indices, inclusive) or "all" -> (start, end) with end exclusive."""
    units = list(units)
    if value == "all":
        return 0, len(units)
    if not isinstance(value, str) or ".." not in value:
        raise UserError(f"A window is a string \"A..B\" of unit names or indices (inclusive), or \"all\"; got {value!r}.")
    ends = []
    for part in value.split("..", 1):
        part = part.strip()
        if part.lstrip("-").isdigit():
            i = int(part)
            i = i + len(units) if i < 0 else i
        elif part in units:
            i = units.index(part)
        else:
            i = -1
        if not 0 <= i < len(units):
            raise UserError(f"Window {value!r}: backbone {backbone!r} has no unit {part!r}; its units are: {', '.join(units)}")
        ends.append(i)
    if ends[0] > ends[1]:
        raise UserError(f"Window {value!r}: {units[ends[0]]} comes after {units[ends[1]]} in backbone {backbone!r}.")
    return ends[0], ends[1] + 1


def resolve_strategy_params(strategy: Strategy, backbone_name: str, units: Sequence[str], params: dict[str, Any]) -> dict[str, Any]:
    """Check unit parameters against the backbone's units; turn windows into (start, end) pairs."""
    units = list(units)
    n, out = len(units), dict(params)
    for spec in strategy.params:
        if spec.name not in params:
            if spec.default is None:
                raise UserError(f"Strategy {strategy.name!r} needs parameter {spec.name!r} ({spec.help}).")
            out[spec.name] = spec.default
            continue
        value = params[spec.name]
        if spec.kind == "window":
            out[spec.name] = parse_window(value, units, backbone_name)
        elif spec.kind == "unit":
            if isinstance(value, int) and not isinstance(value, bool) and -n <= value < 0:
                value = out[spec.name] = value + n  # counted from the end
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= n:
                raise UserError(
                    f"Strategy {strategy.name!r}: {spec.name}={value!r} is outside 0..{n} for backbone "
                    f"{backbone_name!r}, whose {n} units are: {', '.join(units)}"
                )
            if spec.after and isinstance(out.get(spec.after), int) and value < out[spec.after]:
                raise InvalidParams(f"{spec.name}={value} is below {spec.after}={out[spec.after]}")
    return out
