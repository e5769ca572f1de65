"""Strategies that change the network before training.

- ``lora``: low-rank updates beside the pretrained convolutions and linear layers, through Hugging Face
  ``peft`` (an optional extra). The pretrained weights all stay frozen and bit-identical; only the
  low-rank matrices and the head train. On export the updates are merged into the convolutions, so the
  exported model is the plain backbone and loads without peft.
- ``activation_swap``: the activation functions of the trained units replaced (ReLU/ReLU6 by LeakyReLU
  or ReLU; paper 001 compared ReLU with LeakyReLU), then those units fine-tuned. No parameter changes, so
  the exported model keeps the swap: loading it applies the swap again (the manifest names it)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from freezebench import hookimpl
from freezebench.errors import UserError
from freezebench.strategy import FreezePlan, InvalidParams, StrategyParam, plan_from_frozen

PEFT_MISSING = "it needs Hugging Face peft, an optional extra: pip install 'freezebench[peft]'"
TARGETS = ("pointwise", "conv", "all")  # 1x1 convolutions; every dense convolution; and linear layers too


def _targets(model, units: Mapping[str, Sequence[str]], targets: str) -> list[str]:
    """Names of the modules to wrap: convolutions (and linear layers for "all") whose own parameters lie in
    ``units``. Depthwise and other grouped convolutions are left alone (a low-rank update of a per-channel
    filter saves nothing)."""
    from torch import nn

    inside = {p for params in units.values() for p in params}
    out = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            wanted = module.groups == 1 and (targets != "pointwise" or module.kernel_size == (1, 1))
        else:
            wanted = isinstance(module, nn.Linear) and targets == "all"
        if wanted and f"{name}.weight" in inside:
            out.append(name)
    return out


def _peft_installed() -> bool:
    return importlib.util.find_spec("peft") is not None


class LoraSurgery:
    """Wraps the chosen layers with peft's LoRA layers (W x + (alpha / r) B A x, B starting at zero, so the
    network computes exactly what it did before the first update)."""

    def __init__(self, rank: int, alpha: float, targets: str, units: Sequence[str]):
        self.rank, self.alpha, self.targets, self.units = rank, alpha, targets, tuple(units)
        self.wrapped: list[str] = []

    def describe(self) -> str:
        return f"LoRA r={self.rank} alpha={self.alpha:g} on {self.targets} layers of {len(self.units)} units"

    def apply(self, model, units: Mapping[str, Sequence[str]]) -> None:
        from freezebench.torch_compat import ensure_torchvision_importable

        ensure_torchvision_importable()  # peft imports transformers, which imports torchvision
        from peft import LoraConfig, inject_adapter_in_model

        self.wrapped = _targets(model, {u: units[u] for u in self.units}, self.targets)
        if not self.wrapped:
            raise InvalidParams(f"no {self.targets} layer to wrap in units {', '.join(self.units) or '(none)'}")
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=0.0, target_modules=self.wrapped)
        inject_adapter_in_model(config, model)

    def merge(self, model) -> bool:
        """Fold B A into each wrapped layer's weight and put the layer itself back: the plain backbone."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, module in list(model.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge()
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
        return True


@dataclass(frozen=True)
class Lora:
    name: str = "lora"
    colour: str = "#17becf"  # the same colour in every figure
    summary: str = "low-rank updates (LoRA, via peft) beside the convolutions of units k.., pretrained weights frozen"
    params: tuple[StrategyParam, ...] = (
        StrategyParam("rank", "int", "rank r of each low-rank update", default=4),
        StrategyParam("alpha", "float", "LoRA alpha: the update is scaled by alpha / rank", default=8.0),
        StrategyParam("targets", "choice", "which layers get an update: 1x1 convolutions, every dense convolution, "
                      "or convolutions and linear layers", default="pointwise", choices=TARGETS),
        StrategyParam("k", "unit", "units before k get no update (and their output can be cached)", default=0),
    )
    pretrained: bool = True

    def unavailable(self) -> str:
        return "" if _peft_installed() else PEFT_MISSING

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        if self.unavailable():
            raise UserError(f"Strategy 'lora': {PEFT_MISSING}.")
        rank, alpha, targets, k = int(params["rank"]), float(params["alpha"]), str(params["targets"]), int(params["k"])
        if rank < 1:
            raise InvalidParams(f"rank must be >= 1, got {rank}")
        if alpha <= 0:
            raise InvalidParams(f"alpha must be > 0, got {alpha}")
        if targets not in TARGETS:
            raise InvalidParams(f"targets must be one of {', '.join(TARGETS)}, got {targets!r}")
        return plan_from_frozen(units, units, params, surgery=LoraSurgery(rank, alpha, targets, units[k:]))


ACTIVATIONS = ("leaky_relu", "relu")
SWAPPED = ("ReLU", "ReLU6", "LeakyReLU")  # the module types an activation swap replaces


class ActivationSurgery:
    """Replaces every ReLU, ReLU6 or LeakyReLU module inside ``units`` by ``activation``."""

    def __init__(self, activation: str, slope: float, units: Sequence[str]):
        self.activation, self.slope, self.units = activation, slope, tuple(units)
        self.swapped: list[str] = []

    def describe(self) -> str:
        what = f"LeakyReLU(slope {self.slope:g})" if self.activation == "leaky_relu" else "ReLU"
        return f"activations of {len(self.units)} units replaced by {what}"

    def _new(self):
        from torch import nn

        return nn.LeakyReLU(self.slope) if self.activation == "leaky_relu" else nn.ReLU()

    def apply(self, model, units: Mapping[str, Sequence[str]]) -> None:
        from freezebench.engine.surgery import owning_unit

        self.swapped = [name for name, module in model.named_modules()
                        if type(module).__name__ in SWAPPED and owning_unit(name, units) in self.units]
        if not self.swapped:
            raise InvalidParams(f"no ReLU, ReLU6 or LeakyReLU module in units {', '.join(self.units) or '(none)'}")
        for name in self.swapped:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, self._new())

    def merge(self, model) -> bool:
        return False  # nothing to fold back: the exported model keeps the new activations


@dataclass(frozen=True)
class ActivationSwap:
    name: str = "activation_swap"
    colour: str = "#bcbd22"
    summary: str = "units k.. fine-tuned with their ReLU/ReLU6 activations replaced (LeakyReLU or ReLU; paper 001)"
    params: tuple[StrategyParam, ...] = (
        StrategyParam("activation", "choice", "the new activation", default="leaky_relu", choices=ACTIVATIONS),
        StrategyParam("slope", "float", "LeakyReLU's negative slope", default=0.01),
        StrategyParam("k", "unit", "units before k stay frozen and unchanged (and their output can be cached)", default=0),
    )
    pretrained: bool = True

    def plan(self, units: Sequence[str], params: Mapping[str, Any]) -> FreezePlan:
        activation, slope, k = str(params["activation"]), float(params["slope"]), int(params["k"])
        if activation not in ACTIVATIONS:
            raise InvalidParams(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if not 0 <= slope < 1:
            raise InvalidParams(f"slope must be in [0, 1), got {slope}")
        return plan_from_frozen(units, units[:k], params, surgery=ActivationSurgery(activation, slope, units[k:]))


@hookimpl
def register_strategies(register):
    register(Lora())
    register(ActivationSwap())
