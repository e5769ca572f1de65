"""The deconvnet view (Zeiler & Fergus, 2014) that paper 004 used to compare frozen and fine-tuned
networks layer by layer: a layer's strongest feature map, projected back to pixel space through
the network's own layers, transposed and without training.

It is computed as a backward pass from the chosen feature map to the image, with one change:
at every ReLU (and ReLU6) module the signal coming down is rectified and the forward mask is
ignored, which is the deconvnet's rule. The rest of the backward pass is already the deconvnet:
a convolution's input gradient is the transposed convolution with the same weights, and max
pooling's gradient is unpooling by the recorded switches (Simonyan et al., 2014, sec. 4). Other
activations (SiLU, GELU) and ReLUs applied as functions rather than modules keep their plain
gradient. Networks that downsample by strided convolutions get guided backpropagation instead
(``default_rule``): the deconvnet has no switches to localise the signal there.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from freezebench.backbone import Unit

_RECTIFIERS = (nn.ReLU, nn.ReLU6)
RULES = ("deconvnet", "guided")


@contextmanager
def backward_rule(model: nn.Module, rule: str):
    """While active, every ReLU/ReLU6 module's backward follows ``rule``: "deconvnet" passes
    ReLU(signal from above) and ignores the forward mask; "guided" (guided backpropagation,
    Springenberg et al., 2015) applies the forward mask and then rectifies."""
    if rule not in RULES:
        raise ValueError(f"unknown backward rule {rule!r}: use one of {', '.join(RULES)}")
    pick = 1 if rule == "deconvnet" else 0  # grad_out (unmasked) or grad_in (masked by the forward pass)
    changed, hooks = [], []
    for module in model.modules():
        if isinstance(module, _RECTIFIERS):
            if module.inplace:  # backward hooks cannot wrap an in-place op
                module.inplace = False
                changed.append(module)
            hooks.append(module.register_full_backward_hook(
                lambda m, grad_in, grad_out: (((grad_in, grad_out)[pick][0]).clamp(min=0),)))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for module in changed:
            module.inplace = True


def default_rule(model: nn.Module) -> str:
    """"deconvnet" for networks that downsample by max pooling after their first layer (AlexNet,
    VGG: the deconvnet's switches localise the signal), "guided" for those that downsample by
    strided convolutions (ResNet, MobileNet, EfficientNet), where deconvnet views are dominated by
    the strides' checkerboard (Springenberg et al., 2015, sec. 3.4)."""
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    strided = any(max(m.stride) > 1 for m in convs[1:])
    return "guided" if strided else "deconvnet"


def _unit_module(model: nn.Module, unit: Unit, order: list[str]) -> str | None:
    """The module whose output is the unit's output: the outermost module holding exactly the unit's
    parameters (a whole block), else the unit's parameter owner that runs last (a conv's BatchNorm)."""
    owners = list(dict.fromkeys(p.rpartition(".")[0] for p in unit.params))
    parts = [o.split(".") for o in owners]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    wanted = set(unit.params)
    for depth in range(1, len(common) + 1):  # the outermost such module: a block with its residual sum
        path = ".".join(common[:depth])
        if {f"{path}.{n}" for n, _ in model.get_submodule(path).named_parameters()} == wanted:
            return path
    called = [o for o in owners if o in order]
    return max(called, key=order.index) if called else None


def unit_layers(model: nn.Module, units: tuple[Unit, ...], input_size: int, at_most: int = 5) -> list[tuple[str, str]]:
    """(unit name, module name) of up to ``at_most`` units with a spatial output, evenly spaced from
    the first to the last, in forward order."""
    order: list[str] = []
    shapes: dict[str, torch.Size] = {}
    hooks = []
    for name, module in model.named_modules():
        def record(m, args, out, name=name):
            if name not in shapes:
                order.append(name)
                shapes[name] = out.shape if isinstance(out, torch.Tensor) else torch.Size()
        hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    spatial = []
    for unit in units:
        module = _unit_module(model, unit, order)
        shape = shapes.get(module) if module is not None else None
        if shape is not None and len(shape) == 4 and shape[-1] * shape[-2] > 1:
            spatial.append((unit.name, module))
    if len(spatial) <= at_most:
        return spatial
    picks = np.unique(np.round(np.linspace(0, len(spatial) - 1, at_most)).astype(int))
    return [spatial[i] for i in picks]


def deconv_views(model: nn.Module, x: torch.Tensor, layers: list[str], rule: str = "deconvnet") -> tuple[np.ndarray, np.ndarray]:
    """(views (L, N, 3, H, W) float32, channels (L, N)) for normalised inputs ``x``.

    For each layer and image: the channel with the strongest activation is kept (rectified), every
    other channel is zeroed, and that map is projected back to the image by ``rule``.
    """
    was_training = model.training
    model.eval()
    captured: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(name).register_forward_hook(lambda m, i, out, name=name: captured.__setitem__(name, out))
             for name in layers]
    views, channels = [], []
    try:
        with torch.enable_grad(), backward_rule(model, rule):
            image = x.detach().float().requires_grad_(True)
            model(image)
            for n, name in enumerate(layers):
                fmap = captured[name]
                strongest = fmap.detach().flatten(2).amax(2).argmax(1)  # (N,)
                keep = torch.zeros_like(fmap)
                rows = torch.arange(len(fmap), device=fmap.device)
                keep[rows, strongest] = fmap.detach()[rows, strongest].clamp(min=0)
                (grad,) = torch.autograd.grad(fmap, image, grad_outputs=keep, retain_graph=n < len(layers) - 1)
                views.append(grad.detach().float().cpu().numpy())
                channels.append(strongest.cpu().numpy())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return np.stack(views).astype(np.float32), np.stack(channels)


def to_display(views: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """(..., 3, H, W) projections as (..., H, W, 3) uint8 images: zero is mid-grey, and each view is
    scaled so that its ``percentile`` magnitude reaches black or white (a few extreme pixels would
    otherwise leave the rest grey); the rest is clipped."""
    flat = np.abs(views).reshape(*views.shape[:-3], -1)
    scale = np.percentile(flat, percentile, axis=-1)[..., None, None, None]
    scaled = np.where(scale > 0, views / np.maximum(scale, 1e-12), 0.0).clip(-1, 1)
    return np.moveaxis(np.round(127.5 + 127.5 * scaled).astype(np.uint8), -3, -1)
