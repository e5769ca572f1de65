"""MedMNIST datasets from their official ``.npz`` files, with the official train/val/test splits.

``breastmnist`` is shipped inside freezebench (the demo dataset); any other MedMNIST 2D file
loads through ``medmnist_npz`` with ``path = "..."``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from freezebench.dataset import SPLITS, DatasetSpec, ImageDataset
from freezebench.errors import UserError
from freezebench.hookspecs import hookimpl

ASSETS = Path(__file__).parent / "assets"
BREASTMNIST_CLASSES = ("malignant", "normal_or_benign")


@hookimpl
def register_datasets(register):
    register(
        DatasetSpec(
            name="breastmnist",
            load=load_breastmnist,
            summary="BreastMNIST 28x28 ultrasound, 2 classes, 780 images (shipped)",
            options=("path",),
        )
    )
    register(
        DatasetSpec(
            name="medmnist_npz",
            load=load_npz,
            summary="any MedMNIST 2D .npz file: path = ..., optional classes = [...]",
            options=("path", "classes", "name"),
        )
    )


def load_breastmnist(path: str | None = None) -> ImageDataset:
    return load_npz(path or ASSETS / "breastmnist.npz", classes=BREASTMNIST_CLASSES, name="breastmnist")


def load_npz(path, classes=None, name: str | None = None) -> ImageDataset:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"MedMNIST file not found: {path}. Check the dataset's 'path'.")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"Cannot read {path} as a .npz file: {exc}") from exc
    with npz:
        wanted = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")]
        missing = [k for k in wanted if k not in npz.files]
        if missing:
            raise UserError(f"{path} is not a MedMNIST file: missing arrays {missing}.")
        images, labels, split = [], [], []
        for s in SPLITS:
            imgs = npz[f"{s}_images"]
            labs = npz[f"{s}_labels"].reshape(len(imgs), -1)
            if labs.shape[1] != 1:
                raise UserError(f"{path}: multi-label MedMNIST files are not supported ({s}_labels {labs.shape}).")
            if imgs.dtype != np.uint8 or imgs.ndim not in (3, 4):
                raise UserError(f"{path}: {s}_images must be uint8 (N,H,W) or (N,H,W,3), got {imgs.dtype} {imgs.shape}.")
            images.append(imgs)
            labels.append(labs[:, 0].astype(np.int64))
            split += [s] * len(imgs)
    labels = np.concatenate(labels)
    n_classes = int(labels.max()) + 1
    classes = tuple(classes) if classes else tuple(str(i) for i in range(n_classes))
    if len(classes) < n_classes:
        raise UserError(f"{path}: labels go up to {n_classes - 1} but only {len(classes)} class names were given.")
    all_images = np.concatenate(images)
    return ImageDataset(
        name=name or path.stem,
        classes=classes,
        images=all_images,
        labels=labels,
        split=np.array(split),
        # MedMNIST has no subject ids: each image is its own group.
        groups=np.array([f"{path.stem}-{i}" for i in range(len(labels))]),
        source=str(path),
    )
