"""Leakage audit: subjects in more than one split, and identical or near-identical images across
splits (a 256-bit difference hash, confirmed by the correlation of 32x32 thumbnails)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..imagefiles import fingerprints

HASH_BITS_MAX = 10       # of 256: at most this many differing bits ...
MIN_CORRELATION = 0.98   # ... and thumbnails this correlated: the same picture
BLOCK = 128              # rows compared at once: memory BLOCK x N x 32 bytes, whatever N


def near_duplicate_pairs(images) -> list[tuple[int, int]]:
    """Index pairs (i < j) of identical or near-identical images."""
    if len(images) < 2:
        return []
    hashes, thumbs = fingerprints(images)
    pairs = []
    for start in range(0, len(images), BLOCK):
        dist = np.bitwise_count(np.bitwise_xor(hashes[start : start + BLOCK, None], hashes[None])).sum(2, dtype=np.int32)
        close = np.argwhere(dist <= HASH_BITS_MAX)
        close = close[start + close[:, 0] < close[:, 1]]
        if len(close):
            corr = np.einsum("ij,ij->i", thumbs[start + close[:, 0]], thumbs[close[:, 1]]) / thumbs.shape[1]
            pairs += [(int(start + i), int(j)) for (i, j), c in zip(close, corr) if c >= MIN_CORRELATION]
    return sorted(pairs)


def duplicate_groups(images, groups: np.ndarray) -> np.ndarray:
    """Group ids merged so that near-duplicate images (and their subjects) share one group."""
    labels = {g: i for i, g in enumerate(dict.fromkeys(groups.tolist()))}
    parent = list(range(len(labels)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in near_duplicate_pairs(images):
        a, b = find(labels[groups[i]]), find(labels[groups[j]])
        if a != b:
            parent[b] = a
    return np.array([f"g{find(labels[g])}" for g in groups.tolist()])


@dataclass
class LeakReport:
    subjects: dict[str, list[str]] = field(default_factory=dict)  # subject -> splits it is in
    duplicates: list[tuple[int, int, str, str]] = field(default_factory=list)  # i, j, split_i, split_j
    protocol: list[str] = field(default_factory=list)  # leaky protocol choices made on purpose
    allowed: bool = False  # run anyway (allow_leaks / --allow-leaks): flagged on every run

    @property
    def clean(self) -> bool:
        return not (self.subjects or self.duplicates or self.protocol)

    def summary(self) -> str:
        if self.clean:
            return "no leaks"
        parts = []
        if self.subjects:
            parts.append(f"{len(self.subjects)} subjects in more than one split (e.g. "
                         + ", ".join(f"{s}: {'+'.join(v)}" for s, v in list(self.subjects.items())[:3]) + ")")
        if self.duplicates:
            parts.append(f"{len(self.duplicates)} identical or near-identical image pairs across splits")
        parts += self.protocol
        return "; ".join(parts)


def audit(dataset, check_duplicates: bool = True) -> LeakReport:
    report = LeakReport()
    by_subject: dict[str, set[str]] = {}
    for g, s in zip(dataset.groups.tolist(), dataset.split.tolist()):
        by_subject.setdefault(g, set()).add(s)
    report.subjects = {g: sorted(s) for g, s in by_subject.items() if len(s) > 1}
    if check_duplicates:
        split = dataset.split
        report.duplicates = [(i, j, split[i], split[j]) for i, j in near_duplicate_pairs(dataset.images) if split[i] != split[j]]
    return report
