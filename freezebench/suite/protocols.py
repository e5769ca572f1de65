"""Evaluation protocols: how a dataset is split into train/val/test, leak-free by default.

- ``split = "auto"``: the dataset's own splits when it has them (MedMNIST), else ``"ratio"``.
- ``split = "ratio"``: stratified by class, at the subject level, seeded: no subject (and no
  pair of near-identical images) in two splits.
- ``split = "kfold"``: stratified group k-fold (scikit-learn); fold i is the test set and the
  validation set is taken from the rest at the same subject level.
- ``test_on``: an external test set (another dataset, e.g. another hospital). With
  ``subjects = "held_out"`` in its table, the external set shares this dataset's subject ids (another
  view or acquisition of the same people): the split keeps its test part, and the test set is the
  external images of exactly the subjects held out of training and validation.
- Leaky protocols, on purpose, to reproduce a paper: ``level = "image"`` splits images, not
  subjects (paper 000); ``augment_before_split = k`` adds k augmented copies of every image
  before an image-level split (paper 003). Both need ``allow_leaks``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..dataset import ImageDataset
from ..errors import UserError
from ..imagefiles import join, take
from .leakage import LeakReport, audit, duplicate_groups

PROTOCOL_KEYS = ("split", "ratios", "folds", "fold", "split_seed", "level", "test_on", "allow_leaks", "augment_before_split")
TEST_ON_SUBJECTS = ("other", "held_out")  # test_on.subjects: other people (ids not comparable), or this split's test subjects


@dataclass(frozen=True)
class SplitProtocol:
    split: str = "auto"
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    folds: int = 5
    fold: int | None = None
    seed: int = 0
    level: str = "subject"
    test_on: dict[str, Any] | None = None
    allow_leaks: bool = False
    augment_before_split: int = 0

    @classmethod
    def from_options(cls, options: dict[str, Any], where: str) -> "SplitProtocol":
        p = cls(**{("seed" if k == "split_seed" else k): v for k, v in options.items() if k in PROTOCOL_KEYS})
        if p.split not in ("auto", "official", "ratio", "kfold"):
            raise UserError(f"{where}.split: must be 'auto', 'official', 'ratio' or 'kfold', not {p.split!r}")
        ratios = tuple(p.ratios)
        if len(ratios) != 3 or any(not isinstance(r, (int, float)) or r < 0 for r in ratios) or ratios[0] <= 0 or sum(ratios) <= 0:
            raise UserError(f"{where}.ratios: give three non-negative numbers train:val:test, e.g. [5, 2, 3]; got {p.ratios!r}")
        total = float(sum(ratios))
        p = dataclasses.replace(p, ratios=tuple(r / total for r in ratios))
        if not isinstance(p.folds, int) or p.folds < 2:
            raise UserError(f"{where}.folds: must be an integer >= 2, got {p.folds!r}")
        if p.fold is not None and (not isinstance(p.fold, int) or not 0 <= p.fold < p.folds):
            raise UserError(f"{where}.fold: must be an integer in 0..{p.folds - 1}, got {p.fold!r}")
        if p.level not in ("subject", "image"):
            raise UserError(f"{where}.level: must be 'subject' or 'image', not {p.level!r}")
        if not isinstance(p.augment_before_split, int) or p.augment_before_split < 0:
            raise UserError(f"{where}.augment_before_split: must be an integer >= 0")
        if p.test_on is not None and not (isinstance(p.test_on, dict) and isinstance(p.test_on.get("name"), str)):
            raise UserError(f'{where}.test_on: must be a table {{ name = "dataset", <options> }}')
        if p.test_on is not None and p.test_on.get("subjects", "other") not in TEST_ON_SUBJECTS:
            raise UserError(f"{where}.test_on.subjects: must be 'other' (another dataset's people, the default) or 'held_out' "
                            f"(the same people's ids: test on the subjects held out of training), not {p.test_on['subjects']!r}")
        return p

    @property
    def held_out_subjects(self) -> bool:
        """test_on shares this dataset's subject ids: test on its held-out subjects only."""
        return self.test_on is not None and self.test_on.get("subjects") == "held_out"

    def describe(self) -> str:
        if self.split == "kfold":
            return f"kfold k={self.folds} fold={self.fold} seed={self.seed} level={self.level}"
        if self.split == "ratio":
            return f"ratio {':'.join(f'{r:.2f}' for r in self.ratios)} seed={self.seed} level={self.level}"
        return self.split


def _group_labels(labels: np.ndarray, groups: np.ndarray) -> dict[str, int]:
    """Each group's majority label (groups are stratified by it)."""
    out = {}
    for g in np.unique(groups):
        out[g] = int(np.bincount(labels[groups == g]).argmax())
    return out


def ratio_split(labels: np.ndarray, groups: np.ndarray, ratios, seed: int) -> np.ndarray:
    """Stratified, group-level split into train/val/test by image counts, as close to ``ratios``
    as whole groups allow. (scikit-learn's splitters give k-folds or a single shuffle split, not
    a stratified three-way group split, so this one assigns groups class by class.)"""
    rng = np.random.default_rng(seed)
    group_label = _group_labels(labels, groups)
    sizes = {g: int((groups == g).sum()) for g in group_label}
    split_of: dict[str, str] = {}
    names = ("train", "val", "test")
    for c in sorted(set(group_label.values())):
        members = [g for g, lab in group_label.items() if lab == c]
        rng.shuffle(members)
        total = sum(sizes[g] for g in members)
        targets = [r * total for r in ratios]
        filled = [0, 0, 0]
        for g in members:  # give the group to the split furthest below its target
            need = [targets[i] - filled[i] if ratios[i] > 0 else -np.inf for i in range(3)]
            i = int(np.argmax(need))
            split_of[g] = names[i]
            filled[i] += sizes[g]
    return np.array([split_of[g] for g in groups.tolist()])


def kfold_split(labels: np.ndarray, groups: np.ndarray, folds: int, fold: int, val_share: float, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    split = np.empty(len(labels), dtype="<U5")
    for i, (_, test_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        if i == fold:
            split[:] = "train"
            split[test_idx] = "test"
    rest = np.flatnonzero(split == "train")
    inner = ratio_split(labels[rest], groups[rest], (1 - val_share, val_share, 0.0), seed)
    split[rest] = inner
    return split


def _pool_groups(ds: ImageDataset, pool: np.ndarray, level: str) -> np.ndarray:
    """Group ids of the images at ``pool``: subjects and near-duplicates whole (``level = "subject"``), else one each."""
    if level == "subject":
        return duplicate_groups(take(ds.images, pool), np.asarray(ds.groups).astype(str)[pool])
    return np.array([f"i{i}" for i in pool])


def resplit(ds: ImageDataset, seed: int, level: str = "subject") -> ImageDataset:
    """The dataset with its training and validation images drawn again (``seed``), its test images
    untouched: the same number of validation images per class as far as whole groups allow, subjects
    (``level = "subject"``) and near-duplicate images kept whole within one split. A confirmation re-run
    on such a split is scored on other validation images, so a configuration's mean over its re-runs is
    not one validation set's luck (``confirm.resplit``)."""
    pool = np.flatnonzero(ds.split != "test")
    labels = ds.labels[pool]
    groups = _pool_groups(ds, pool, level)
    share = float((ds.split[pool] == "val").mean())
    inner = ratio_split(labels, groups, (1.0 - share, share, 0.0), seed)
    split = np.array(ds.split, copy=True)
    split[pool] = inner
    return dataclasses.replace(ds, split=split, split_source="made")


def validation_folds(ds: ImageDataset, seed: int, level: str = "subject") -> list[np.ndarray]:
    """The training images cut into disjoint folds of about the validation set's size (image indices into
    ``ds``), stratified by class (scikit-learn's ``StratifiedGroupKFold``): ``fold_resplit`` validates on one
    of them. Groups with an image in the validation set stay out of every fold (in training), so no
    subject or near-duplicate is ever on both sides of a fold's split."""
    from sklearn.model_selection import StratifiedGroupKFold

    pool = np.flatnonzero(ds.split != "test")
    groups = _pool_groups(ds, pool, level)
    in_val = set(groups[ds.split[pool] == "val"].tolist())
    eligible = np.array([ds.split[i] == "train" and g not in in_val for i, g in zip(pool, groups)], dtype=bool)
    n_val = max(1, int((ds.split == "val").sum()))
    parts = max(2, round(int(eligible.sum()) / n_val))
    parts = min(parts, len(set(groups[eligible].tolist())))
    if parts < 2:
        raise UserError(f"Dataset {ds.name!r}: too few training subjects to cut validation folds from "
                        f"(confirm.resplit = \"folds\"): {parts} outside the validation set's subjects and its images' "
                        "near-duplicates. Use resplit = true or false.")
    splitter = StratifiedGroupKFold(n_splits=parts, shuffle=True, random_state=seed)
    index = pool[eligible]
    return [index[held] for _, held in splitter.split(np.zeros(len(index)), ds.labels[index], groups[eligible])]


def fold_resplit(ds: ImageDataset, folds: list[np.ndarray], fold: int) -> ImageDataset:
    """The dataset validated on ``folds[fold % len(folds)]`` (``validation_folds``) and trained on every other
    training or validation image; the test images untouched (``confirm.resplit = "folds"``). With as many
    re-runs as folds, a configuration's runs together validate on every image of train+val once (but training
    images grouped with a validation image, usually none): inner cross-validation, the search's own
    validation set being one of its folds."""
    split = np.array(ds.split, copy=True)
    split[split == "val"] = "train"
    split[folds[fold % len(folds)]] = "val"
    return dataclasses.replace(ds, split=split, split_source="made")


def apply_protocol(dataset: ImageDataset, protocol: SplitProtocol, load_external: Callable[[dict], ImageDataset] | None = None,
                   augment: Callable | None = None) -> tuple[ImageDataset, LeakReport]:
    """Return the dataset with its train/val/test splits made by ``protocol``, and its leak audit."""
    ds, leaky = dataset, []
    if protocol.augment_before_split:
        if augment is None:
            raise ValueError("augment_before_split needs an augment function")
        ds = _augmented_copies(ds, protocol.augment_before_split, protocol.seed, augment)
        leaky.append(f"{protocol.augment_before_split} augmented copies per image made before splitting (paper 003's protocol)")
    level = "image" if protocol.augment_before_split else protocol.level
    if level == "image":
        leaky.append("split at the image level, not the subject level")
    mode = protocol.split
    if mode == "auto":
        mode = "official" if ds.is_split and not protocol.augment_before_split else "ratio"
    if mode == "official" and not ds.is_split:
        raise UserError(f"Dataset {ds.name!r} has no splits of its own: use split = \"ratio\" or \"kfold\".")
    if mode == "official":
        split = np.asarray(ds.split)
    else:
        if level == "subject":
            groups = duplicate_groups(ds.images, np.asarray(ds.groups).astype(str))
        else:
            groups = np.array([f"i{i}" for i in range(len(ds.labels))])
        ratios = protocol.ratios
        if protocol.test_on is not None and not protocol.held_out_subjects:  # train/val only: the test set is another dataset
            ratios = (ratios[0], ratios[1], 0.0)
        if mode == "kfold":
            val_share = ratios[1] / (ratios[0] + ratios[1])
            split = kfold_split(ds.labels, groups, protocol.folds, protocol.fold or 0, val_share, protocol.seed)
        else:
            split = ratio_split(ds.labels, groups, ratios, protocol.seed)
    if protocol.test_on is not None:
        ds = _with_external_test(ds, split, protocol, load_external)
    else:
        ds = dataclasses.replace(ds, split=split, split_source="given" if mode == "official" else "made")
    # splits made at the subject level are clean by construction; anything else is checked
    check = ds.split_source == "given" or level == "image" or protocol.test_on is not None
    report = audit(ds, check_duplicates=check)
    report.protocol = leaky
    return ds, report


def _with_external_test(ds: ImageDataset, split: np.ndarray, protocol: SplitProtocol, load_external) -> ImageDataset:
    """Train and validate on ``ds`` (its test part dropped), test on another dataset."""
    external = load_external({k: v for k, v in protocol.test_on.items() if k != "subjects"})
    if tuple(external.classes) != tuple(ds.classes):
        raise UserError(
            f"test_on {protocol.test_on['name']!r}: its classes {list(external.classes)} differ from "
            f"{ds.name!r}'s {list(ds.classes)}; an external test set needs the same classes in the same order."
        )
    keep = split != "test"
    groups, external_groups = np.asarray(ds.groups).astype(str), np.asarray(external.groups).astype(str)
    tested = np.arange(len(external.labels))
    if protocol.held_out_subjects:  # the same people: only those held out of training and validation
        held_out = set(groups[~keep].tolist())
        tested = np.flatnonzero(np.isin(external_groups, list(held_out)))
        if not len(tested):
            raise UserError(
                f"test_on {protocol.test_on['name']!r} with subjects = \"held_out\": none of its images belongs to the "
                f"{len(held_out)} subjects held out of training (ids such as {sorted(held_out)[:2]}, its own such as "
                f"{sorted(set(external_groups.tolist()))[:2]}). Use it without subjects = \"held_out\" when its people differ.")
        external_groups = external_groups[tested]
        internal = groups[keep]  # one id space: the leak audit checks that no tested subject trained
    else:  # subject ids of two datasets are not comparable: keep them apart (pixels are still audited)
        internal, external_groups = np.char.add("internal:", groups[keep]), np.char.add("external:", external_groups)
    return ImageDataset(
        name=ds.name,
        classes=ds.classes,
        images=join(take(ds.images, np.flatnonzero(keep)), take(external.images, tested)),
        labels=np.concatenate([ds.labels[keep], external.labels[tested]]),
        split=np.concatenate([split[keep], np.full(len(tested), "test")]),
        groups=np.concatenate([internal, external_groups]),
        source=f"{ds.source} (test: {external.source}{', held-out subjects' if protocol.held_out_subjects else ''})",
        meta={**ds.meta, "external_test": external.name},
        split_source="made",
    )


def _augmented_copies(ds: ImageDataset, k: int, seed: int, augment) -> ImageDataset:
    rng = np.random.default_rng(seed)
    images, labels, groups = list(ds.images), list(ds.labels), list(np.asarray(ds.groups).astype(str))
    for i in range(len(ds.labels)):
        for _ in range(k):
            images.append(augment(np.asarray(ds.images[i]), rng))
            labels.append(ds.labels[i])
            groups.append(groups[i])
    return dataclasses.replace(ds, images=images, labels=np.array(labels), groups=np.array(groups), split=None)
