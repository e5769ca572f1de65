"""Feature-map visualisation of a trained trial on chosen test images: Grad-CAM (Selvaraju et al.,
2017), and the deconvnet view of a few layers (see ``deconv``).

The maps are taken at the model's last spatial feature map (the last module, in call order, whose
output is (N, C, H, W) with H x W > 1), for the image's true class: where the trained network finds
evidence for the right answer. Frozen layers need no gradients of their own: the feature map is
detached and made a leaf, so Grad-CAM works for a linear probe as well as for full fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .deconv import deconv_views, default_rule, to_display


@dataclass
class SaliencyMaps:
    indices: np.ndarray  # (n,) positions in the test split
    images: np.ndarray  # (n, S, S, 3) uint8, as the model saw them (before normalisation; at most 128 px)
    labels: np.ndarray  # (n,)
    predicted: np.ndarray  # (n,)
    cams: np.ndarray  # (n, h, w) float32 in [0, 1], at the feature map's own resolution
    layer: str  # the module whose output was used
    deconv: np.ndarray | None = None  # (L, m, S, S, 3) uint8: deconvnet views of the first m images (one per class)
    deconv_layers: tuple[str, ...] = ()  # (L,) the freeze units whose outputs were projected
    deconv_channels: np.ndarray | None = None  # (L, m) the strongest channel of each
    deconv_at: np.ndarray | None = None  # (m,) positions in ``indices`` of the images the views are of
    deconv_rule: str = ""  # "deconvnet" or "guided" (see ``deconv.default_rule``)


def choose_images(labels: np.ndarray, per_class: int = 2) -> np.ndarray:
    """The first ``per_class`` test images of each class: the same images for every trial of a study."""
    picks = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=int)


DISPLAY_SIZE = 128
_RESAMPLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def last_spatial_module(model: nn.Module, example: torch.Tensor) -> str:
    """Name of the last module (in call order) that outputs a 4-D map larger than 1 x 1."""
    order: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if name and not isinstance(module, _RESAMPLING):  # adaptive pools only resize the last map
            hooks.append(module.register_forward_hook(
                lambda m, i, out, name=name: order.append(name)
                if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1 else None))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ValueError("the model has no spatial feature map (no 4-D module output larger than 1 x 1)")
    return order[-1]


def grad_cam(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, layer: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(cams (N, h, w) in [0, 1], predicted classes (N,), layer) for normalised inputs ``x``.

    Per image: weights = gradient of the class score, averaged over the map; cam = ReLU(sum of
    weighted channels), scaled to a maximum of 1 (all zeros when no location supports the class).
    """
    was_training = model.training
    model.eval()
    layer = layer or last_spatial_module(model, x[:1])
    captured: list[torch.Tensor] = []

    def as_leaf(module, inputs, output):
        leaf = output.detach().float().requires_grad_(True)
        captured.append(leaf)
        return leaf

    hook = model.get_submodule(layer).register_forward_hook(as_leaf)
    try:
        with torch.enable_grad():
            logits = model(x)
            score = logits.gather(1, classes.view(-1, 1).to(logits.device)).sum()
            (grads,) = torch.autograd.grad(score, captured[0])
    finally:
        hook.remove()
        model.train(was_training)
    maps = captured[0].detach()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cams = F.relu((weights * maps).sum(1))
    peak = cams.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    cams = torch.where(peak > 1e-12, cams / peak, torch.zeros_like(cams))
    return cams.cpu().numpy().astype(np.float32), logits.argmax(1).cpu().numpy(), layer


def upsample(cam: np.ndarray, size: int) -> np.ndarray:
    """A (h, w) map bilinearly resized to (size, size), for overlaying on the image."""
    t = torch.as_tensor(cam, dtype=torch.float32)[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def _display(batch: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images at most DISPLAY_SIZE px: every trial's artifacts stay small."""
    if batch.shape[-1] <= DISPLAY_SIZE:
        return batch
    return F.interpolate(batch.float(), size=(DISPLAY_SIZE, DISPLAY_SIZE), mode="bilinear", antialias=True)


def saliency_maps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, norm, compute, max_images: int = 8,
                  layers: list[tuple[str, str]] = ()) -> SaliencyMaps | None:
    """Grad-CAM of a trained model on up to ``max_images`` chosen test images (None: no spatial map),
    and the deconvnet view of ``layers`` ((unit, module) pairs) on the first image of each class."""
    labels_np = labels.numpy()
    classes = max(1, len(np.unique(labels_np)))
    idx = choose_images(labels_np, per_class=max(1, min(2, max_images // classes)))[:max_images]
    if not len(idx):
        return None
    batch = images[torch.as_tensor(idx)]
    x = compute.layout(norm(compute.batch(batch)))
    try:
        cams, predicted, layer = grad_cam(model, x, labels[torch.as_tensor(idx)])
    except ValueError:
        return None
    maps = SaliencyMaps(indices=idx, images=_display(batch).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy(),
                        labels=labels_np[idx], predicted=predicted, cams=cams, layer=layer)
    if layers:
        first = np.flatnonzero(np.isin(idx, choose_images(labels_np, per_class=1)))
        rule = default_rule(model)
        views, channels = deconv_views(model, x[torch.as_tensor(first)], [module for _, module in layers], rule)
        shown = _display(torch.from_numpy(views).flatten(0, 1)).unflatten(0, views.shape[:2]).numpy()
        maps.deconv, maps.deconv_channels, maps.deconv_at = to_display(shown), channels, first
        maps.deconv_layers, maps.deconv_rule = tuple(unit for unit, _ in layers), rule
    return maps
