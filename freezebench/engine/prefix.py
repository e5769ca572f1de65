"""Frozen-prefix caching: run the never-trained first units once per image, train the rest.

A backbone is split into a sequence of steps (its top-level modules in execution order, with
sequential containers expanded). The split is trusted only after checking, on a random input,
that the steps reproduce the model's logits. A trial can cache when its plan keeps a prefix
of units frozen for the whole trial, the prefix has nothing stochastic or batch-dependent in
train mode (BatchNorm in inference mode, no active dropout or drop-path), and the inputs are
deterministic (no online augmentation). The cut is the last step made only of those units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbone import Backbone
from ..strategy import FreezePlan
from .device import CPU, Compute
from .units import trace_call_order

_CONTAINERS = (nn.Sequential, nn.ModuleList)


@dataclass
class Decomposition:
    steps: list[tuple[str, nn.Module]]  # (name, module) in execution order
    reason: str = ""  # why the model cannot be decomposed ("" when it can)


def _execution_order(model: nn.Module, input_size: int) -> list[str]:
    """Top-level children, and the children of sequential top-level containers, as they run."""
    targets: dict[str, nn.Module] = {}
    for name, child in model.named_children():
        if isinstance(child, _CONTAINERS):
            targets.update({f"{name}.{sub}": m for sub, m in child.named_children()})
        else:
            targets[name] = child
    return trace_call_order(model, targets, input_size)


class _FlattenIfNeeded(nn.Module):
    def forward(self, x):
        return torch.flatten(x, 1) if x.dim() > 2 else x


# (module structure, input size) -> (execution order, reason); the split depends on the architecture
# only, so the trials of a study trace and check it once
_CHECKED: dict[tuple, tuple[list[str], str]] = {}


def _structure(model: nn.Module) -> tuple:
    return tuple((name, type(m).__qualname__) for name, m in model.named_modules())


def decompose(backbone: Backbone, input_size: int = 64) -> Decomposition:
    key = (backbone.name, _structure(backbone.model), input_size)
    if key in _CHECKED:
        order, reason = _CHECKED[key]
        return Decomposition([], reason) if reason else Decomposition(_steps(backbone.model, order))
    result = _decompose(backbone, input_size)
    if len(_CHECKED) > 64:
        _CHECKED.clear()
    _CHECKED[key] = ([n for n, _ in result.steps if n != "flatten"], result.reason)
    return result


def _steps(model: nn.Module, order: list[str]) -> list[tuple[str, nn.Module]]:
    steps: list[tuple[str, nn.Module]] = []
    for name in order:
        module = model.get_submodule(name)
        if isinstance(module, nn.Linear) and steps and not any(isinstance(m, _FlattenIfNeeded) for _, m in steps):
            steps.append(("flatten", _FlattenIfNeeded()))  # torch.flatten called in forward()
        steps.append((name, module))
    return steps


def _decompose(backbone: Backbone, input_size: int) -> Decomposition:
    model = backbone.model
    try:
        order = _execution_order(model, input_size)
    except Exception as exc:  # noqa: BLE001 - any failure just means "no caching"
        return Decomposition([], f"tracing failed: {exc}")
    # a module that runs twice (or a functional op between modules) fails the check below
    steps = _steps(model, order)
    # its own generator: checking must not move the global RNG that dropout in training draws from
    x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            expected = model(x)
            got = x
            for _, module in steps:
                got = module(got)
    except Exception as exc:  # noqa: BLE001
        return Decomposition([], f"the module sequence does not run: {type(exc).__name__}")
    finally:
        model.train(was_training)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        return Decomposition([], "the module sequence does not reproduce the model's output")
    return Decomposition(steps)


def _stochastic(module: nn.Module) -> bool:
    for m in module.modules():
        if isinstance(m, nn.Dropout) and m.p > 0:
            return True
        if type(m).__name__ == "DropPath" and getattr(m, "drop_prob", 0) > 0:
            return True
    return False


def cache_blocker(backbone: Backbone, plan: FreezePlan, *, online_augment: bool) -> str:
    """Why no prefix can be cached, from the plan alone ("" when one might be): checked before
    the (costlier) decomposition of the model."""
    if online_augment:
        return "online augmentation makes every epoch's inputs different"
    if plan.bn_policy == "train":
        return "bn_policy 'train' updates BatchNorm statistics in the frozen units"
    if not plan.only_freezes:
        return "an adaptive strategy decides during training what trains (its controller)"
    # a controller that only freezes may freeze the first unit later: its prefix is cached from then on
    if not backbone.units or (backbone.units[0].name not in plan.never_trained and plan.controller is None):
        return "the first unit trains"
    return ""


def cut_point(backbone: Backbone, plan: FreezePlan, decomposition: Decomposition, *, online_augment: bool) -> tuple[int, str]:
    """Number of leading steps that can be cached (0: none), and why not when 0."""
    blocker = cache_blocker(backbone, plan, online_augment=online_augment)
    if blocker:
        return 0, blocker
    if decomposition.reason:
        return 0, decomposition.reason
    return leading_cut(backbone, set(plan.never_trained), decomposition)


def leading_cut(backbone: Backbone, never_again: set[str], decomposition: Decomposition) -> tuple[int, str]:
    """Number of leading steps made only of units in ``never_again`` (frozen from now to the trial's end),
    with nothing stochastic; and why not when 0."""
    frozen: set[str] = set()
    for unit in backbone.units:  # the leading units frozen from now on
        if unit.name not in never_again:
            break
        frozen.update(unit.params)
    head = set(backbone.head.params)
    cut = 0
    owner = {id(p): n for n, p in backbone.model.named_parameters()}
    for i, (_, module) in enumerate(decomposition.steps):
        names = {owner[id(p)] for p in module.parameters() if id(p) in owner}
        if names & head or (names and not names <= frozen) or _stochastic(module):
            break
        cut = i + 1
    if cut and not any(True for _, m in decomposition.steps[:cut] for _ in m.parameters()):
        return 0, "no frozen layer before the first trainable one"
    return cut, "" if cut else "the first unit trains"


class CachedSuffix(nn.Module):
    """The steps after the cut: the model a cached trial trains, on prefix features."""

    def __init__(self, steps: list[tuple[str, nn.Module]]):
        super().__init__()
        self.steps = nn.ModuleList(m for _, m in steps)

    def forward(self, x):
        for module in self.steps:
            x = module(x)
        return x


def prefix_batch_size(image_size: int) -> int:
    """Images per prefix batch: about 16 at 224 px (0.8 Mpixel), which kept this CPU's caches warm
    (16 images at 224 px ran 1.4x faster than 64); bounded to 8..128."""
    return max(8, min(128, (16 * 224 * 224) // (image_size * image_size)))


@torch.no_grad()
def prefix_features(steps: list[tuple[str, nn.Module]], images: torch.Tensor, normalize, batch_size: int | None = None,
                    dtype: torch.dtype = torch.float32, compute: Compute = CPU) -> torch.Tensor:
    """Run the cached steps once over uint8 images (in inference mode); features are kept on the host."""
    modules = [m for _, m in steps]
    states = [m.training for m in modules]
    for m in modules:
        m.eval()
    batch_size = batch_size or prefix_batch_size(images.shape[-1])
    try:
        out = []
        for start in range(0, len(images), batch_size):
            x = compute.layout(normalize(compute.batch(images[start : start + batch_size])))
            with compute.autocast():
                for m in modules:
                    x = m(x)
            out.append(x.to("cpu", dtype).contiguous())
        return torch.cat(out)
    finally:
        for m, state in zip(modules, states):
            m.train(state)
