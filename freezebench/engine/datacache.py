"""Per-study memory of preprocessed images and frozen-prefix features, shared by its trials."""

from __future__ import annotations

from typing import Callable

import torch

from .augment import augment_batch
from ..dataset import SPLITS, ImageDataset
from ..imagefiles import resize_all
from .training import SplitTensors


class DataCache:
    """Per-study memory of preprocessed data, shared by the trials of a study.

    ``get``: resized uint8 tensors per (dataset, size, resize mode, offline augmentation); offline
    augmentation adds ``copies`` fixed augmented copies of the training split only, made after
    splitting (so no copy of a test image reaches training). ``features``: outputs of a frozen
    prefix, per (context: weights, data, compute; the prefix's step names), kept within a memory
    limit (oldest evicted first); ``nearest`` finds a shallower cached prefix to start from. ``memo``:
    any other small result trials share (a warm-started head's fit).
    """

    def __init__(self):
        self._store: dict[tuple, dict[str, SplitTensors]] = {}
        self._features: dict[tuple, dict[str, SplitTensors]] = {}
        self._memo: dict[tuple, object] = {}

    def memo(self, key: tuple, compute: Callable[[], object]):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def get(self, dataset: ImageDataset, size: int, resize_mode: str = "stretch", copies: int = 0, seed: int = 0) -> dict[str, SplitTensors]:
        key = (id(dataset), size, resize_mode, copies, seed if copies else 0)
        if key not in self._store:
            labels = torch.as_tensor(dataset.labels, dtype=torch.long)
            splits = {s: SplitTensors(torch.from_numpy(resize_all(dataset.images, size, resize_mode, rows=idx)), labels[idx])
                      for s in SPLITS for idx in [dataset.indices(s)]}  # image files: read from their disk cache
            if copies:
                train, generator = splits["train"], torch.Generator().manual_seed(seed)
                extra = [augment_batch(train.images, generator) for _ in range(copies)]
                splits["train"] = SplitTensors(torch.cat([train.images, *extra]), train.labels.repeat(copies + 1))
            self._store[key] = splits
        return self._store[key]

    def nearest(self, context: tuple, names: tuple[str, ...]) -> tuple[int, dict[str, SplitTensors] | None]:
        """The cached features of the longest shorter prefix of ``names`` (same context): (its length, features)."""
        length, best = 0, None
        for (ctx, cached), feats in self._features.items():
            if ctx == context and length < len(cached) < len(names) and names[: len(cached)] == cached:
                length, best = len(cached), feats
        return length, best

    def features(self, key: tuple, compute: Callable[[], dict[str, SplitTensors]], limit_bytes: int) -> dict[str, SplitTensors]:
        if key not in self._features:
            self._features[key] = compute()
            while len(self._features) > 1 and self.feature_bytes() > limit_bytes:
                del self._features[next(iter(self._features))]
        return self._features[key]

    def feature_bytes(self) -> int:
        return sum(t.images.numel() * t.images.element_size() for f in self._features.values() for t in f.values())
