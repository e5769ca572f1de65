"""The classification head: what replaces the backbone's classifier for the dataset's classes.

"linear" (default): one new linear layer on the backbone's pooled features.
"mlp": paper 003's head: Dense(hidden) - ReLU - Dropout - BatchNorm - Linear(classes).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ..backbone import Backbone, Unit
from ..records import HEADS


def _linear(backbone: Backbone) -> nn.Linear:
    module = backbone.model.get_submodule(backbone.head.name)
    if not isinstance(module, nn.Linear):
        raise ValueError(f"backbone {backbone.name}: head {backbone.head.name} is {type(module).__name__}, not Linear")
    return module


def with_head(backbone: Backbone, kind: str = "linear", hidden: int = 256, dropout: float = 0.5) -> Backbone:
    if kind == "linear":
        return backbone
    if kind != "mlp":
        raise ValueError(f"head must be one of {HEADS}, not {kind!r}")
    old = _linear(backbone)
    new = nn.Sequential(
        nn.Linear(old.in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.BatchNorm1d(hidden), nn.Linear(hidden, old.out_features),
    )
    path = backbone.head.name
    parent, _, leaf = path.rpartition(".")
    (backbone.model.get_submodule(parent) if parent else backbone.model).add_module(leaf, new)
    head = Unit(path, tuple(f"{path}.{n}" for n, _ in new.named_parameters()))
    return dataclasses.replace(backbone, head=head)


def describe_head(backbone: Backbone) -> str:
    module = backbone.model.get_submodule(backbone.head.name)
    if isinstance(module, nn.Linear):
        what = f"a new Linear({module.in_features} -> {module.out_features})"
    else:
        what = "a new " + " - ".join(type(m).__name__ for m in module.children())
    return (f"`{backbone.head.name}`: {what} on the backbone's pooled features; it always trains, at "
            "head_lr_mult x lr. Every other layer, including layers between pooling and the "
            "classifier (pre-logits, conv_head, fc6/fc7), belongs to a unit above.")
