"""MedMNIST datasets from their official ``.npz`` files, with the official train/val/test splits.

``breastmnist`` is shipped inside freezebench (the demo dataset); any MedMNIST 2D file loads
through ``medmnist_npz`` with ``path = "..."``; ``medmnist`` with ``flag = "pneumoniamnist"``
downloads the official file when it is absent and verifies its MD5 checksum.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from freezebench.dataset import SPLITS, DatasetSpec, ImageDataset
from freezebench.errors import UserError
from freezebench.hookspecs import hookimpl
from freezebench.imageio import cache_dir

ASSETS = Path(__file__).parent / "assets"
BREASTMNIST_CLASSES = ("malignant", "normal_or_benign")
# The official MedMNIST v2/v3 28x28 single-label 2D files (zenodo record 10519652) and their MD5s.
MEDMNIST_URL = "https://zenodo.org/records/10519652/files/{flag}.npz?download=1"
MEDMNIST_MD5 = {
    "pathmnist": "a8b06965200029087d5bd730944a56c1",
    "dermamnist": "0744692d530f8e62ec473284d019b0c7",
    "octmnist": "c68d92d5b585d8d81f7112f81e2d0842",
    "pneumoniamnist": "28209eda62fecd6e6a2d98b1501bb15f",
    "retinamnist": "bd4c0672f1bba3e3a89f0e4e876791e4",
    "breastmnist": "750601b1f35ba3300ea97c75c52ff8f6",
    "bloodmnist": "7053d0359d879ad8a5505303e11de1dc",
    "tissuemnist": "ebe78ee8b05294063de985d821c1c34b",
    "organamnist": "68e3f8846a6bd62f0c9bf841c0d9eacc",
}


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
            name="medmnist",
            load=load_medmnist,
            summary="an official MedMNIST 2D dataset by flag, downloaded and MD5-checked when absent",
            options=("flag", "root", "url", "md5"),
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


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_medmnist(flag: str, root=None, url: str | None = None, md5: str | None = None) -> Path:
    """The official file for ``flag`` under ``root`` (default: the freezebench cache), downloaded
    if absent; its MD5 is checked either way."""
    if flag not in MEDMNIST_MD5 and not (url and md5):
        raise UserError(f"Unknown MedMNIST flag {flag!r}; known: {', '.join(MEDMNIST_MD5)} (or give url and md5).")
    expected = md5 or MEDMNIST_MD5[flag]
    target = Path(root or cache_dir() / "medmnist") / f"{flag}.npz"
    if not target.is_file():
        source = url or MEDMNIST_URL.format(flag=flag)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        try:
            import torch

            torch.hub.download_url_to_file(source, str(partial), progress=False)
        except Exception as exc:
            partial.unlink(missing_ok=True)
            raise UserError(f"Could not download {flag} from {source}: {type(exc).__name__}: {exc}. "
                            f"Offline? Put the file at {target}.") from None
        if _md5(partial) != expected:
            partial.unlink()
            raise UserError(f"The file downloaded from {source} has the wrong MD5 (expected {expected}); nothing was kept.")
        partial.replace(target)
    elif _md5(target) != expected:
        raise UserError(f"{target} has MD5 {_md5(target)}, expected {expected}: the file is corrupt or not the "
                        "official one. Delete it to download it again.")
    return target


def load_medmnist(flag: str = "breastmnist", root=None, url: str | None = None, md5: str | None = None) -> ImageDataset:
    return load_npz(fetch_medmnist(flag, root, url, md5), name=flag)


def load_npz(path, classes=None, name: str | None = None) -> ImageDataset:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"MedMNIST file not found: {path}. Check the dataset's 'path'.")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":  # a .npz is a zip archive; anything else (text, a lone .npy, HTML) is not one
        raise UserError(f"{path} is not a .npz file (a .npz is a zip archive of arrays; this file starts with {magic!r}). "
                        "Save the arrays with numpy.savez, or check the dataset's 'path'.")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"Cannot read {path} as a .npz file: {type(exc).__name__}: {exc}") from None
    with npz:
        wanted = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")]
        missing = [k for k in wanted if k not in npz.files]
        if missing:
            raise UserError(f"{path} is not a MedMNIST file: missing arrays {missing}.")
        images, labels, split = [], [], []
        for s in SPLITS:
            imgs, labs = _array(npz, path, f"{s}_images"), _array(npz, path, f"{s}_labels")
            if imgs.dtype != np.uint8 or imgs.ndim not in (3, 4) or (imgs.ndim == 4 and imgs.shape[3] not in (1, 3)):
                hint = " (flattened? reshape each image to (H, W) before saving)" if imgs.ndim == 2 else ""
                raise UserError(f"{path}: {s}_images must be uint8 (N,H,W) or (N,H,W,3), got {imgs.dtype} {imgs.shape}{hint}.")
            if labs.shape[:1] != imgs.shape[:1]:
                raise UserError(f"{path}: {s}_labels holds {labs.shape[0] if labs.ndim else 0} labels for {len(imgs)} "
                                f"{s}_images: one label per image is needed.")
            labs = labs.reshape(len(imgs), -1)
            if labs.shape[1] != 1:
                raise UserError(f"{path}: multi-label MedMNIST files are not supported ({s}_labels {labs.shape}).")
            if not np.issubdtype(labs.dtype, np.integer) or (labs.size and labs.min() < 0):
                raise UserError(f"{path}: {s}_labels must be class indices 0, 1, ... (integers), got {labs.dtype} "
                                f"with values from {labs.min() if labs.size else '-'}.")
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


def _array(npz, path: Path, key: str) -> np.ndarray:
    """One array of the file; object arrays (pickled Python objects) are refused, never unpickled."""
    try:
        return npz[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UserError(f"{path}: {key} is an array of Python objects (pickled), which freezebench never loads: "
                            "it could run code. Save numeric arrays (uint8 images, integer labels).") from None
        raise UserError(f"{path}: cannot read {key}: {exc}") from None
    except Exception as exc:  # a truncated or damaged member of the zip
        raise UserError(f"{path}: cannot read {key} ({type(exc).__name__}: {exc}); the file is damaged.") from None
