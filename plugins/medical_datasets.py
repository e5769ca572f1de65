"""The papers' datasets: OASIS-1 MRI slices (paper 000's cohort) and PH2 dermoscopy (paper 002)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from freezebench.dataset import DatasetSpec, ImageDataset
from freezebench.errors import UserError
from freezebench.hookspecs import hookimpl
from freezebench.imagefiles import decode_files
from freezebench.imageio import list_images

from .folder_datasets import _require_dir, _root_available

OASIS_VIEWS = ("axial", "coronal", "sagittal")
OASIS_SUBJECT = re.compile(r"(OAS1_\d{4})")
PH2_TASKS = {"3class": ("common_nevus", "atypical_nevus", "melanoma"), "melanoma": ("not_melanoma", "melanoma")}


@hookimpl
def register_datasets(register):
    register(DatasetSpec("oasis1", load_oasis1, "OASIS-1 brain MRI slices, CDR 0 vs > 0, per subject (paper 000)",
                         options=("root", "view", "on_error"), available=_root_available, data_subdir="oasis1-slices"))
    register(DatasetSpec("ph2", load_ph2, "PH2 dermoscopy, 200 images: 3 classes or melanoma vs rest (paper 002)",
                         options=("root", "task", "on_error"), available=_root_available, data_subdir="ph2"))


def load_oasis1(root=None, view="axial", on_error="fail") -> ImageDataset:
    root = _require_dir(root, "Dataset 'oasis1'")
    views = OASIS_VIEWS if view == "all" else (view,)
    if any(v not in OASIS_VIEWS for v in views):
        raise UserError(f"Dataset 'oasis1': view must be one of {OASIS_VIEWS} or 'all', not {view!r}.")
    files, labels, subjects = [], [], []
    for v in views:
        for label in (0, 1):
            folder = root / v / str(label)
            if not folder.is_dir():
                raise UserError(f"Dataset 'oasis1': folder {folder} not found (expected VIEW/0 and VIEW/1 under {root}).")
            for f in list_images(folder):
                match = OASIS_SUBJECT.search(f.name)
                if not match:
                    raise UserError(f"Dataset 'oasis1': cannot read a subject id (OAS1_XXXX) from file name {f}.")
                files.append(f)
                labels.append(label)
                subjects.append(match.group(1))
    clinical = _oasis_clinical(root)
    without = sorted({s for s in subjects if clinical and f"{s}_MR1" not in clinical})
    if without:
        raise UserError(f"Dataset 'oasis1': subjects {without[:3]} have images but no row in oasis_cross-sectional.csv.")
    images, kept = decode_files(files, on_error)
    return ImageDataset(
        name="oasis1",
        classes=("cdr0", "cdr_gt0"),
        images=images,
        labels=np.array([labels[i] for i in kept], dtype=np.int64),
        split=None,
        groups=np.array([subjects[i] for i in kept]),
        source=f"{root} ({view})",
        meta={"clinical": clinical, "files": [str(files[i]) for i in kept]},
    )


def _oasis_clinical(root: Path) -> dict[str, dict]:
    path = root / "oasis_cross-sectional.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        return {row["ID"]: row for row in csv.DictReader(f)}


def load_ph2(root=None, task="3class", on_error="fail") -> ImageDataset:
    root = _require_dir(root, "Dataset 'ph2'")
    if task not in PH2_TASKS:
        raise UserError(f"Dataset 'ph2': task must be one of {list(PH2_TASKS)}, not {task!r}.")
    labels_csv, folder = root / "labels.csv", root / "images_half"
    if not labels_csv.is_file() or not folder.is_dir():
        raise UserError(f"Dataset 'ph2': expected {labels_csv} and {folder}.")
    with open(labels_csv, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    on_disk = {p.stem: p for p in list_images(folder)}
    no_file = [r["image"] for r in rows if r["image"] not in on_disk]
    no_row = sorted(set(on_disk) - {r["image"] for r in rows})
    if no_file:
        raise UserError(f"Dataset 'ph2': {labels_csv} has rows without image files in {folder}: {no_file[:5]}.")
    if no_row:
        raise UserError(f"Dataset 'ph2': images without a row in {labels_csv}: {no_row[:5]}. Add them or remove the files.")
    raw = np.array([int(r["label"]) for r in rows])
    labels = raw if task == "3class" else (raw == 2).astype(np.int64)
    images, kept = decode_files([on_disk[r["image"]] for r in rows], on_error)
    return ImageDataset(
        name="ph2" if task == "3class" else "ph2_melanoma",
        classes=PH2_TASKS[task],
        images=images,
        labels=labels[kept],
        split=None,
        groups=np.array([rows[i]["image"] for i in kept]),  # one lesion image per patient
        source=f"{root} ({task})",
    )
