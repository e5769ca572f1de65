"""Datasets from folders and CSV files: image_folder (one subfolder per class), brain_tumor_mri
(paper 003's data, an image folder), and csv_manifest (path, label, optional subject, split)."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

from freezebench.dataset import SPLITS, DatasetSpec, ImageDataset
from freezebench.errors import UserError
from freezebench.hookspecs import hookimpl
from freezebench.imagefiles import decode_files
from freezebench.imageio import IMAGE_SUFFIXES, list_images


@hookimpl
def register_datasets(register):
    register(DatasetSpec("image_folder", load_image_folder, "images in one subfolder per class (jpg/png/bmp, any mode and size)",
                         options=("root", "classes", "on_error", "subject_pattern"), available=_root_available))
    register(DatasetSpec("brain_tumor_mri", load_brain_tumor_mri, "brain MRI, tumour yes/no, 253 images (paper 003's data)",
                         options=("root", "on_error"), available=_root_available, data_subdir="brain-tumor-mri"))
    register(DatasetSpec("csv_manifest", load_csv_manifest, "a CSV of path, label and optional subject and split columns",
                         options=("path", "classes", "on_error", "root")))


def _root_available(root=None, **_):
    if root is None:
        return "no root given"
    return None if Path(root).is_dir() else f"folder {root} not found"


def _require_dir(root, what: str) -> Path:
    if root is None:
        raise UserError(f"{what}: set its 'root' folder (or a data_root for the suite).")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{what}: folder {root} does not exist. Check 'root' / data_root, or FREEZEBENCH_DATA_ROOT.")
    return root


def load_image_folder(root=None, classes=None, on_error="fail", subject_pattern=None, name="image_folder") -> ImageDataset:
    root = _require_dir(root, f"Dataset {name!r}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = list(classes) if classes else folders
    missing = [c for c in classes if c not in folders]
    if missing or len(classes) < 2:
        raise UserError(f"Dataset {name!r}: {root} needs one subfolder per class; found {folders}, "
                        + (f"missing {missing}." if missing else "need at least 2."))
    files, labels = [], []
    for i, c in enumerate(classes):
        found = list_images(root / c)
        if not found:
            raise UserError(f"Dataset {name!r}: class folder {root / c} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
        files += found
        labels += [i] * len(found)
    images, kept = decode_files(files, on_error)
    files = [files[i] for i in kept]
    return ImageDataset(
        name=name,
        classes=tuple(classes),
        images=images,
        labels=np.array([labels[i] for i in kept], dtype=np.int64),
        split=None,
        groups=np.array([_subject(f, subject_pattern, root) for f in files]),
        source=str(root),
        meta={"files": [str(f) for f in files]},
    )


def _subject(path: Path, pattern: str | None, root: Path) -> str:
    if pattern:
        match = re.search(pattern, path.name)
        if match:
            return match.group(1) if match.groups() else match.group(0)
    return str(path.relative_to(root))  # one subject per image


def load_brain_tumor_mri(root=None, on_error="fail") -> ImageDataset:
    return load_image_folder(root, classes=("no", "yes"), on_error=on_error, name="brain_tumor_mri")


def load_csv_manifest(path=None, classes=None, on_error="fail", root=None) -> ImageDataset:
    """Rows name images relative to ``root`` (default: the CSV's folder), or by absolute paths inside it.
    A path that leads out of ``root`` is refused: a manifest never reads files it was not given."""
    if path is None or not Path(path).is_file():
        raise UserError(f"csv_manifest: file {path} not found. Set its 'path'.")
    path = Path(path)
    base = Path(os.path.abspath(root if root is not None else path.parent))
    if root is not None and not base.is_dir():
        raise UserError(f"csv_manifest: root folder {base} does not exist. Set 'root' to the folder holding the images.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows, header = list(reader), reader.fieldnames or []
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at position {exc.start}). Save it as "
                        "UTF-8 (in a spreadsheet: \"CSV UTF-8\").") from None
    if not {"path", "label"} <= set(header):
        raise UserError(f"{path}: needs a header with columns path and label (optional: subject, split); "
                        f"its first line has {header or 'nothing'}.")
    if not rows:
        raise UserError(f"{path}: has a header but no rows: list one image per row (path, label).")
    filled = sum(bool((r.get("split") or "").strip()) for r in rows)
    if 0 < filled < len(rows):
        raise UserError(f"{path}: split is filled on {filled} of {len(rows)} rows. Fill it on every row, or leave the "
                        "column empty everywhere to let the protocol make the splits.")
    files = [Path(os.path.normpath(base / (r["path"] or "").strip())) for r in rows]
    outside = [r["path"] for r, f in zip(rows, files) if not f.is_relative_to(base) or f == base]
    if outside:
        raise UserError(f"{path}: {len(outside)} rows name paths outside {base}, e.g. {outside[:3]}. Paths are read "
                        f"relative to {'root' if root is not None else 'the CSV'}; move the images under it, or set this "
                        "dataset's root to a folder that holds them all.")
    absent = [str(r["path"]) for r, f in zip(rows, files) if not f.is_file()]
    if absent:
        raise UserError(f"{path}: {len(absent)} rows name files that do not exist, e.g. {absent[:3]}. Fix the paths (relative to the CSV).")
    names = [r["label"] for r in rows]
    if not classes:  # inferred: a label with a handful of rows next to big classes is most likely a typo
        counts = {n: names.count(n) for n in sorted(set(names))}
        rare = [n for n, c in counts.items() if c < 3 and max(counts.values()) >= 10 * c]
        if rare:
            raise UserError(f"{path}: label(s) {rare} have only {[counts[n] for n in rare]} rows, next to {counts}: a typo? "
                            "Fix the labels, or name the classes with classes = [...] for this dataset.")
    classes = list(classes) if classes else sorted(set(names))
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise UserError(f"{path}: labels {unknown} are not among classes {classes}.")
    has_split = "split" in rows[0] and all(r.get("split") for r in rows)
    if has_split:
        bad = sorted({r["split"] for r in rows} - set(SPLITS))
        if bad:
            raise UserError(f"{path}: split values {bad}; use train, val, test.")
    images, kept = decode_files(files, on_error)
    return ImageDataset(
        name=path.stem,
        classes=tuple(classes),
        images=images,
        labels=np.array([classes.index(names[i]) for i in kept], dtype=np.int64),
        split=np.array([rows[i]["split"] for i in kept]) if has_split else None,
        groups=np.array([rows[i].get("subject") or rows[i]["path"] for i in kept]),
        source=str(path),
    )
