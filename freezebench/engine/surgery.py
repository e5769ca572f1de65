"""Carry out a plan's surgery on a backbone: the network is changed in place, the units follow their
parameters to any new names (found by identity, not by name), and the parameters the surgery added are
listed apart, each credited to the unit whose modules it sits among."""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from ..backbone import Backbone, Unit
from ..strategy import Surgery


class SurgeryError(ValueError):
    """A surgery broke a guarantee (it dropped or replaced pretrained parameters)."""


def operate(backbone: Backbone, surgery: Surgery | None) -> Backbone:
    """``backbone`` after ``surgery.apply`` (the same model object, changed in place), with units renamed
    and ``added`` set. Pretrained parameters must survive as the same tensors: a surgery that replaces
    or drops one is refused, because the plan's guarantee (frozen means bit-identical) could not hold."""
    if surgery is None:
        return backbone
    before = {id(p): n for n, p in backbone.model.named_parameters()}
    surgery.apply(backbone.model, {u.name: u.params for u in backbone.units})
    after = dict(backbone.model.named_parameters())
    renamed = {before[id(p)]: n for n, p in after.items() if id(p) in before}
    lost = sorted(set(before.values()) - set(renamed))
    if lost:
        raise SurgeryError(f"surgery {type(surgery).__name__} removed or replaced pretrained parameters "
                           f"{lost[:3]}{' ...' if len(lost) > 3 else ''}: wrap modules, keep their parameters")
    added = tuple(n for n, p in after.items() if id(p) not in before)

    def follow(unit: Unit) -> Unit:
        return Unit(unit.name, tuple(renamed[p] for p in unit.params))

    return dataclasses.replace(backbone, units=tuple(follow(u) for u in backbone.units), head=follow(backbone.head),
                               added=backbone.added + added)


def _module_of(param: str) -> list[str]:
    return param.split(".")[:-1]


def owning_unit(module_path: str, units: Mapping[str, Sequence[str]]) -> str:
    """The unit (name -> its parameter names) of the parameter whose module shares the longest path prefix
    with ``module_path``: a module with no parameters of its own (an activation), or one a surgery added,
    belongs with the layers around it. "" when it shares no prefix with any unit."""
    path = module_path.split(".")
    best, owner = 0, ""
    for unit, params in units.items():
        for p in params:
            shared = 0
            for a, b in zip(path, _module_of(p)):
                if a != b:
                    break
                shared += 1
            if shared > best:
                best, owner = shared, unit
    return owner


def added_by_unit(backbone: Backbone) -> dict[str, list[str]]:
    """The added parameters, per unit: each goes to the unit of the pretrained parameter whose module path
    shares the longest prefix with its own (a LoRA matrix inside a wrapped convolution goes to that
    convolution's unit; an adapter added to a block to that block's unit). Parameters sharing no prefix
    with any unit are listed under ""."""
    units = {u.name: u.params for u in backbone.units}
    out: dict[str, list[str]] = {}
    for name in backbone.added:
        out.setdefault(owning_unit(".".join(_module_of(name)), units), []).append(name)
    return out
