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
    if not 0 <= axis <= 2:
        raise UserError(f"axis must be 0, 1 or 2, not {axis}")
    depth = data.shape[axis]
    if depth < n:
        raise UserError(f"Volume {path} has {depth} slices along axis {axis}, fewer than slices = {n}.")
    start = (depth - n) // 2
    lo, hi = np.percentile(data, [0.5, 99.5])
    scaled = np.clip((data - lo) / ((hi - lo) or 1.0), 0, 1) * 255
    return [np.ascontiguousarray(np.take(scaled, i, axis=axis).astype(np.uint8)) for i in range(start, start + n)]


def load_volumes(root=None, labels="labels.csv", slices=30, axis=2, classes=None) -> ImageDataset:
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
    classes = list(classes) if classes else sorted(set(names))
    images, labels, groups = [], [], []
    for key, path in volumes.items():
        row = by_key[key]
        for s in _slices(path, int(slices), int(axis)):
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
