"""Freeze units at the `layer` granularity, for any backbone: every learnable conv/linear layer,
in forward order, found by tracing one forward pass. Normalisation layers (and any other
parameter holder) join the unit of the conv/linear layer that runs before them."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..backbone import Backbone, Unit
from ..records import GRANULARITIES
_STARTS_UNIT = (nn.modules.conv._ConvNd, nn.Linear)


def _owners(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that own parameters directly (not through children), by name."""
    return {name: m for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}


def trace_call_order(model: nn.Module, modules: dict[str, nn.Module], input_size: int) -> list[str]:
    """Names of ``modules`` in the order one forward pass (eval mode, a zero image) first calls them."""
    order: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, _n=name: order.append(_n) if _n not in order else None)
        for name, m in modules.items()
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return order


def forward_order(model: nn.Module, input_size: int) -> list[str]:
    """Names of parameter-owning modules in the order a forward pass first calls them."""
    owners = _owners(model)
    order = trace_call_order(model, owners, input_size)
    return order + [n for n in owners if n not in order]  # never called (e.g. auxiliary heads)


def layer_units(backbone: Backbone) -> tuple[Unit, ...]:
    """The backbone's learnable conv/linear layers in forward order (the head excluded)."""
    model = backbone.model
    head = set(backbone.head.params)
    owners = _owners(model)
    units: list[tuple[str, list[str]]] = []
    for name in forward_order(model, max(64, min(backbone.input_size, 224))):
        params = [f"{name}.{p}" if name else p for p, _ in owners[name].named_parameters(recurse=False)]
        params = [p for p in params if p not in head]
        if not params:
            continue
        if isinstance(owners[name], _STARTS_UNIT) or not units:
            units.append((name, params))
        else:
            units[-1][1].extend(params)
    return tuple(Unit(name, tuple(params)) for name, params in units)


def with_granularity(backbone: Backbone, granularity: str) -> Backbone:
    if granularity == "block":
        return backbone
    if granularity != "layer":
        raise ValueError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
    return dataclasses.replace(backbone, units=layer_units(backbone))
