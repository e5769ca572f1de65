"""3D volumes (NIfTI .nii/.nii.gz, Analyze .hdr/.img) read with nibabel: N slices around the
middle along one axis, one subject per volume, labels from a CSV (file, label[, subject])."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from freezebench.dataset import DatasetSpec, ImageDataset
from freezebench.errors import UserError
from freezebench.hookspecs import hookimpl

from .folder_datasets import _require_dir, _root_available

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".hdr")


@hookimpl
def register_datasets(register):
    register(DatasetSpec("volumes", load_volumes, "3D NIfTI/Analyze volumes + labels CSV: N mid slices per volume",
                         options=("root", "labels", "slices", "axis", "classes"), available=_root_available))


def _volume_files(root: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(root.iterdir()):
        name = p.name
        for suffix in VOLUME_SUFFIXES:
            if name.endswith(suffix):
                out[name[: -len(suffix)]] = p
    return out


def _slices(path: Path, n: int, axis: int) -> list[np.ndarray]:
    import nibabel as nib

    try:
        data = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
    except Exception as exc:
        raise UserError(f"Cannot read volume {path}: {type(exc).__name__}: {exc}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise UserError(f"Volume {path} has shape {data.shape}: a 3D volume is needed (for 4D data, save one volume per file).")
    depth = data.shape[axis]
    if depth < n:
        raise UserError(f"Volume {path} has {depth} slices along axis {axis}, fewer than slices = {n}.")
    start = (depth - n) // 2
    lo, hi = np.percentile(data, [0.5, 99.5])
    scaled = np.clip((data - lo) / ((hi - lo) or 1.0), 0, 1) * 255
    return [np.ascontiguousarray(np.take(scaled, i, axis=axis).astype(np.uint8)) for i in range(start, start + n)]


def _whole(value, key: str, allowed: str, ok) -> int:
    """An integer option (TOML gives ints; a string or a float is a mistake to name, not to coerce)."""
    if isinstance(value, bool) or not isinstance(value, int) or not ok(value):
        raise UserError(f"Dataset 'volumes': {key} must be {allowed}, not {value!r}.")
    return value


def load_volumes(root=None, labels="labels.csv", slices=30, axis=2, classes=None) -> ImageDataset:
    slices = _whole(slices, "slices", "a whole number of slices per volume, 1 or more", lambda v: v >= 1)
    axis = _whole(axis, "axis", "0, 1 or 2 (the volume axis to slice along)", lambda v: 0 <= v <= 2)
    if classes is not None and (not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes)
                                or len(set(classes)) != len(classes) or len(classes) < 2):
        raise UserError(f"Dataset 'volumes': classes must be a list of two or more distinct label names, not {classes!r}.")
    root = _require_dir(root, "Dataset 'volumes'")
    csv_path = root / labels
    if not csv_path.is_file():
        raise UserError(f"Dataset 'volumes': labels file {csv_path} not found (columns: file, label[, subject]).")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise UserError(f"{csv_path}: needs columns file and label (optional: subject).")
    volumes = _volume_files(root)
    by_key = {}
    for r in rows:
        key = r["file"]
        for suffix in VOLUME_SUFFIXES + (".img",):
            key = key.removesuffix(suffix)
        by_key[key] = r
    no_file = sorted(k for k in by_key if k not in volumes)
    no_row = sorted(k for k in volumes if k not in by_key)
    if no_file:
        raise UserError(f"{csv_path}: rows without a volume file in {root}: {no_file[:5]}.")
    if no_row:
        raise UserError(f"{root}: volumes without a row in {csv_path}: {no_row[:5]}. Add rows or remove the files.")
    names = [by_key[k]["label"] for k in volumes]
    if classes:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise UserError(f"{csv_path}: labels {unknown} are not among classes {list(classes)}. Fix the labels, or "
                            "list every label in the dataset's classes.")
    classes = list(classes) if classes else sorted(set(names))
    images, labels, groups = [], [], []
    for key, path in volumes.items():
        row = by_key[key]
        for s in _slices(path, slices, axis):
            images.append(s)
            labels.append(classes.index(row["label"]))
            groups.append(row.get("subject") or key)
    return ImageDataset(
        name="volumes",
        classes=tuple(classes),
        images=images,
        labels=np.array(labels, dtype=np.int64),
        split=None,
        groups=np.array(groups),
        source=f"{root} ({slices} slices on axis {axis})",
    )
