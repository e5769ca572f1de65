"""Four freeze strategies, one per extension point of the strategy API:

- ``freeze_fraction``: a static plan (freeze the first ``fraction`` of a backbone's units);
- ``pointwise_tuning``: a parameter selector (only 1x1 convolutions train);
- ``parallel_adapters``: surgery (new 1x1 adapters beside the pretrained convolutions);
- ``freeze_when_still``: training-time control (a unit freezes once its weights stop moving).

A complete third-party freezebench plugin: install it with ``pip install .`` and
``freezebench list strategies`` shows them; a suite searches them like the built-ins.
"""

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from freezebench.hookspecs import hookimpl
from freezebench.strategy import Decision, FreezePlan, ParamInfo, StrategyParam, plan_from_frozen


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


# --- 1. A selector: which parameters of the trainable units train, by what they are --------------------

def _pointwise(p: ParamInfo) -> bool:
    """The 1x1 convolutions (weights and biases), nothing else."""
    from torch import nn

    return isinstance(p.module, nn.Conv2d) and p.module.kernel_size == (1, 1) and p.module.groups == 1


@dataclass(frozen=True)
class PointwiseTuning:
    name: str = "pointwise_tuning"
    summary: str = "only the 1x1 convolutions of units k.. train (a selector over module type), plus the head"
    params: tuple = (StrategyParam("k", "unit", "first unit whose 1x1 convolutions train", default=0),)
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        return plan_from_frozen(units, units[: int(params["k"])], params, param_filter=_pointwise)


# --- 2. Surgery: add modules before training --------------------------------------------------------------

def _parallel(conv):
    """A 1x1 convolution beside a pretrained one, starting at zero: the network computes what it did
    before the first update, and only the new convolution learns. (torch is imported here, not at the
    top: listing plugins then stays fast.)"""
    from torch import nn

    class Parallel(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv
            self.adapter = nn.Conv2d(conv.in_channels, conv.out_channels, 1, stride=conv.stride, bias=False)
            nn.init.zeros_(self.adapter.weight)

        def forward(self, x):
            return self.conv(x) + self.adapter(x)

    return Parallel()


class ParallelAdapters:
    """Surgery: a zero-initialised 1x1 adapter beside every 1x1 convolution of the chosen units."""

    def __init__(self, units: Sequence[str]):
        self.units = tuple(units)

    def describe(self) -> str:
        return f"parallel 1x1 adapters in {len(self.units)} units"

    def apply(self, model, units: Mapping[str, Sequence[str]]) -> None:
        from torch import nn

        inside = {p for u in self.units for p in units[u]}
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1 \
                    and f"{name}.weight" in inside:
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, _parallel(module))

    def merge(self, model) -> bool:
        return False  # kept: the exported model carries the adapters, and loading it applies this surgery again


@dataclass(frozen=True)
class ParallelAdapterTuning:
    name: str = "parallel_adapters"
    summary: str = "zero-initialised 1x1 adapters beside the 1x1 convolutions of units k.. (surgery), backbone frozen"
    params: tuple = (StrategyParam("k", "unit", "first unit that gets adapters", default=0),)
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        return plan_from_frozen(units, units, params, surgery=ParallelAdapters(units[int(params["k"]):]))


# --- 3. Training-time control: decide after each epoch ----------------------------------------------------

class _FreezeWhenStill:
    """After each epoch, freeze the first still-training unit whose weights moved less than ``threshold``
    of their norm in that epoch; the reason is recorded with the decision."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def after_epoch(self, epoch, stats, record):
        for unit, s in stats.items():
            if s.trainable:
                moved = s.update_norm / max(s.weight_norm, 1e-12)
                if moved < self.threshold:
                    return Decision(freeze=(unit,), reason=f"{unit} moved {moved:.2g} of its norm (< {self.threshold:g})")
                return None  # only the first still-training unit is considered: the frozen part stays a prefix
        return None


@dataclass(frozen=True)
class FreezeWhenStill:
    name: str = "freeze_when_still"
    summary: str = "fine-tune everything; freeze the leading unit once its weights stop moving (adaptive)"
    params: tuple = (StrategyParam("threshold", "float", "relative update below which the unit freezes", default=1e-3),)
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        return plan_from_frozen(units, (), params, controller=_FreezeWhenStill(float(params["threshold"])))


@hookimpl
def register_strategies(register):
    register(FreezeFraction())
    register(PointwiseTuning())
    register(ParallelAdapterTuning())
    register(FreezeWhenStill())
