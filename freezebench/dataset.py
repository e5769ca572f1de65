"""The dataset object handed from dataset plugins to the harness."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .errors import UserError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageDataset:
    """Decoded images with a label, a split and a subject/group id per image.

    ``images`` is a sequence of uint8 arrays, each ``(H, W)`` (grayscale) or ``(H, W, 3)``;
    a stacked ``(N, H, W[, 3])`` array works too. ``split`` is None for data that comes without
    splits: the protocol (``freezebench.suite.protocols``) makes them. ``split_source`` says whether
    the splits came with the data ("given") or were made by freezebench ("made").
    """

    name: str
    classes: tuple[str, ...]
    images: Sequence[np.ndarray]
    labels: np.ndarray
    split: np.ndarray | None
    groups: np.ndarray
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    split_source: str = "given"

    def __post_init__(self):
        n = len(self.images)
        if n == 0:
            raise UserError(f"Dataset {self.name!r} ({self.source}) has no images.")
        counts = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(self.classes))
        empty = [self.classes[i] for i in np.flatnonzero(counts == 0)]
        if empty:
            raise UserError(f"Dataset {self.name!r} ({self.source}): class(es) {empty} have no images.")
        for attr in ("labels", "groups") + (("split",) if self.split is not None else ()):
            if len(getattr(self, attr)) != n:
                raise UserError(
                    f"Dataset {self.name!r} ({self.source}): {attr} has {len(getattr(self, attr))} "
                    f"entries for {n} images."
                )
        if self.split is None:
            return
        bad = set(np.unique(self.split)) - set(SPLITS)
        if bad:
            raise UserError(f"Dataset {self.name!r}: unknown split names {sorted(bad)}; use {SPLITS}.")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise UserError(
                f"Dataset {self.name!r}: labels must lie in 0..{len(self.classes) - 1} "
                f"for classes {list(self.classes)}."
            )
        for s in SPLITS:
            present = np.unique(self.labels[self.split == s])
            if len(present) == 0:
                raise UserError(f"Dataset {self.name!r} ({self.source}) has no {s!r} images.")
            if len(present) < 2:
                raise UserError(
                    f"Dataset {self.name!r} ({self.source}): split {s!r} holds only class "
                    f"{self.classes[int(present[0])]!r}. Change the split ratios or the number of folds, "
                    "or add images of the other classes."
                )
        train_classes = set(np.unique(self.labels[self.split == "train"]).tolist())
        missing = [self.classes[c] for c in range(len(self.classes)) if c not in train_classes]
        if missing:
            raise UserError(f"Dataset {self.name!r}: no training images of class(es) {missing}.")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_split(self) -> bool:
        return self.split is not None

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class."""
        if self.split is None:
            return {"all": {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}}
        out = {}
        for s in SPLITS:
            labels = self.labels[self.split == s]
            out[s] = {c: int((labels == i).sum()) for i, c in enumerate(self.classes)}
        return out

    def split_hash(self) -> str:
        """A short hash of the split assignment (which image is in which split, with its label)."""
        h = hashlib.sha256()
        h.update(np.asarray(self.split).astype("U5").tobytes())
        h.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        h.update(np.asarray(self.groups).astype(str).astype("U64").tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset plugin registers: a name and a loader taking the config's options."""

    name: str
    load: Callable[..., ImageDataset]
    summary: str = ""
    options: tuple[str, ...] = ()  # option names the loader accepts (for error messages)
    available: Callable[..., str | None] | None = None  # options -> None, or why the data is missing
    data_subdir: str | None = None  # default 'root' under the suite's data root
