"""Augmentation as in papers 002/003: random translation, horizontal flip, rotation and scaling.

One parameter distribution, two implementations: ``augment_array`` (PIL, any image size, for
copies made at the dataset level) and ``augment_batch`` (torch, a batch of resized uint8
tensors, for online augmentation each epoch or offline copies of the training split).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MAX_ROTATION = 15.0     # degrees
MAX_TRANSLATION = 0.1   # share of the image size
SCALE = (0.9, 1.1)


def _params(u: np.ndarray) -> tuple[float, float, float, float, bool]:
    """Map 5 uniform numbers in [0, 1) to (angle, dx, dy, scale, flip)."""
    angle = (u[0] * 2 - 1) * MAX_ROTATION
    dx, dy = (u[1] * 2 - 1) * MAX_TRANSLATION, (u[2] * 2 - 1) * MAX_TRANSLATION
    scale = SCALE[0] + u[3] * (SCALE[1] - SCALE[0])
    return angle, dx, dy, scale, bool(u[4] < 0.5)


def augment_array(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random augmentation of a uint8 (H, W) or (H, W, 3) image, same size."""
    angle, dx, dy, scale, flip = _params(rng.random(5))
    pil = Image.fromarray(image)
    if flip:
        pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
    w, h = pil.size
    pil = pil.rotate(angle, resample=Image.BILINEAR, translate=(dx * w, dy * h))
    if scale != 1.0:
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
        scaled = pil.resize((sw, sh), Image.BILINEAR)
        canvas = Image.new(pil.mode, (w, h))
        canvas.paste(scaled, ((w - sw) // 2, (h - sh) // 2))
        pil = canvas
    return np.asarray(pil, dtype=np.uint8).copy()


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random augmentation of each image of a uint8 (N, 3, S, S) batch (bilinear, zero fill)."""
    n = images.shape[0]
    u = torch.rand((n, 5), generator=generator).numpy()
    theta = torch.empty((n, 2, 3))
    for i in range(n):
        angle, dx, dy, scale, flip = _params(u[i])
        a = math.radians(angle)
        cos, sin = math.cos(a) / scale, math.sin(a) / scale
        fx = -1.0 if flip else 1.0
        # maps output coordinates to input coordinates, in [-1, 1]
        theta[i] = torch.tensor([[cos * fx, -sin, -2 * dx], [sin * fx, cos, -2 * dy]])
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)
