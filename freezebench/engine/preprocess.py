"""Turn decoded images into model input: 3 channels, the trial's size, the backbone's normalisation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..records import RESIZE_MODES


def _to_rgb(image: np.ndarray) -> Image.Image:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L").convert("RGB")
    if arr.ndim == 3 and arr.shape[2] == 3:
        return Image.fromarray(arr, mode="RGB")
    if arr.ndim == 3 and arr.shape[2] == 1:
        return Image.fromarray(arr[:, :, 0], mode="L").convert("RGB")
    raise ValueError(f"image of shape {arr.shape}: expected (H, W) or (H, W, 3)")




def _pad_square(pil: Image.Image) -> Image.Image:
    side = max(pil.size)
    canvas = Image.new("RGB", (side, side))
    canvas.paste(pil, ((side - pil.size[0]) // 2, (side - pil.size[1]) // 2))
    return canvas


def resize_images(images, size: int, mode: str = "stretch") -> torch.Tensor:
    """Every image as ``size`` x ``size`` RGB (grayscale repeated to 3 channels); uint8 (N, 3, S, S).

    ``mode="stretch"`` resizes to the square; ``"pad"`` keeps the aspect ratio, padding with black.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, not {mode!r}")
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    for i, image in enumerate(images):
        pil = _to_rgb(image)
        if mode == "pad" and pil.size[0] != pil.size[1]:
            pil = _pad_square(pil)
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.BILINEAR)
        out[i] = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)
    return out


class Normalizer:
    """uint8 batch -> float batch with the backbone's mean and std."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.mean.device != batch.device:  # normalise where the batch is (on the GPU, after a uint8 copy)
            self.mean, self.std = self.mean.to(batch.device), self.std.to(batch.device)
        return (batch.float() - self.mean) / self.std
