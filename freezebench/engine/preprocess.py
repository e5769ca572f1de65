"""Turn decoded images into model input: 3 channels, the trial's size, the backbone's normalisation."""

from __future__ import annotations

import numpy as np
import torch

from ..imagefiles import resize_all


def resize_images(images, size: int, mode: str = "stretch") -> torch.Tensor:
    """Every image as ``size`` x ``size`` RGB (grayscale repeated to 3 channels); uint8 (N, 3, S, S).

    ``mode="stretch"`` resizes to the square; ``"pad"`` keeps the aspect ratio, padding with black.
    Image files come from their disk cache (``freezebench.imagefiles``); the pixels are the same either way.
    """
    return torch.from_numpy(np.ascontiguousarray(resize_all(images, size, mode)))


class Normalizer:
    """uint8 batch -> float batch with the backbone's mean and std."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.mean.device != batch.device:  # normalise where the batch is (on the GPU, after a uint8 copy)
            self.mean, self.std = self.mean.to(batch.device), self.std.to(batch.device)
        return (batch.float() - self.mean) / self.std
