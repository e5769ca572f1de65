"""The backbone object handed from backbone plugins to the harness, and its freeze units."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by whoever builds a model; registering a backbone needs none
    import torch
    from torch import nn


@dataclass(frozen=True)
class Unit:
    """A named group of parameters; units are ordered from input to output."""

    name: str
    params: tuple[str, ...]


@dataclass(frozen=True)
class WeightsRequest:
    """Which pretrained weights to use, from the config."""

    pretrained: bool = True
    file: str | None = None
    sha256: str | None = None


@dataclass
class Backbone:
    """A model with its new classification head, input config and ordered freeze units."""

    name: str
    model: nn.Module
    units: tuple[Unit, ...]
    head: Unit
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_source: str  # "random", "shipped:<file>", "file:<path>", "timm:<tag>"
    weights_sha256: str | None = None
    weights_note: str = ""  # what loading the weights left out or changed, said to the user and recorded
    added: tuple[str, ...] = ()  # parameters a strategy's surgery added (in no unit: they always train)

    def __post_init__(self):
        names = dict(self.model.named_parameters())
        seen: dict[str, str] = {}
        for unit in (*self.units, self.head):
            for p in unit.params:
                if p not in names:
                    raise ValueError(f"backbone {self.name}: unit {unit.name} names unknown parameter {p}")
                if p in seen:
                    raise ValueError(f"backbone {self.name}: parameter {p} in units {seen[p]} and {unit.name}")
                seen[p] = unit.name
        for p in self.added:
            if p not in names or p in seen:
                raise ValueError(f"backbone {self.name}: added parameter {p} is unknown or already in unit {seen.get(p)}")
            seen[p] = "added"
        missing = sorted(set(names) - set(seen))
        if missing:
            raise ValueError(f"backbone {self.name}: parameters in no unit: {missing[:5]}")

    def unit_names(self) -> list[str]:
        return [u.name for u in self.units]

    def param_count(self, unit: Unit) -> int:
        params = dict(self.model.named_parameters())
        return sum(params[p].numel() for p in unit.params)


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone plugin registers."""

    name: str
    build: Callable[[int, WeightsRequest], Backbone]  # (num_classes, weights) -> Backbone
    summary: str = ""
    default_weights: str = ""  # where pretrained weights come from by default, for listings


def trainable_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def state_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
