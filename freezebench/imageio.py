"""Decode image files once (PIL), with a content-keyed disk cache and an error policy."""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
ON_ERROR = ("fail", "skip")


def cache_dir() -> Path:
    return Path(os.environ.get("FREEZEBENCH_CACHE") or Path.home() / ".cache" / "freezebench")


def decode(path: Path) -> np.ndarray:
    """uint8 (H, W) for grayscale images, (H, W, 3) for colour; alpha and palettes flattened."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("L", "I;16", "I", "F", "1"):
            if im.mode != "L":
                arr = np.asarray(im, dtype=np.float64)
                span = arr.max() - arr.min()
                arr = (arr - arr.min()) / (span if span else 1.0) * 255.0
                return arr.astype(np.uint8)
            return np.asarray(im, dtype=np.uint8).copy()
        if im.mode in ("RGBA", "LA", "P", "PA") or "transparency" in im.info:
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (0, 0, 0, 255))
            im = Image.alpha_composite(background, im)
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _content_key(paths: Sequence[Path], salt: str) -> str:
    h = hashlib.sha256(salt.encode())
    for p in paths:
        h.update(str(p.name).encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:24]


def decode_files(paths: Sequence[Path], on_error: str = "fail", *, cache: bool = True) -> tuple[list[np.ndarray], list[int]]:
    """Decode every file; return the images and the indices (into ``paths``) that decoded.

    A corrupt or unreadable file is named, then skipped (``on_error="skip"``, with a warning) or
    fatal (``"fail"``, the default). Results are cached on disk keyed by the files' content.
    """
    if on_error not in ON_ERROR:
        raise UserError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
    paths = [Path(p) for p in paths]
    key = _content_key(paths, f"decode-v1:{on_error}") if cache else None
    cached = cache_dir() / "decoded" / f"{key}.npz" if key else None
    if cached is not None and cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as npz:
                kept = npz["kept"].tolist()
                return [npz[f"i{n}"] for n in range(len(kept))], kept
        except Exception:  # a damaged cache entry (a full disk, a kill mid-write elsewhere): decode again
            pass
    images, kept = [], []
    for i, path in enumerate(paths):
        try:
            images.append(decode(path))
            kept.append(i)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
            message = f"Cannot read image {path}: {type(exc).__name__}: {exc}"
            if on_error == "fail":
                raise UserError(message + ". Fix or remove the file, or set on_error = \"skip\" for this dataset.") from None
            warnings.warn(message + " (skipped: on_error = \"skip\")", stacklevel=2)
    if cached is not None:
        _store(cached, images, kept)
    return images, kept


def _store(cached: Path, images: list[np.ndarray], kept: list[int]) -> None:
    """Write a cache entry atomically (a reader never sees half a file). The cache is optional: when it
    cannot be written (read-only, full, not ours) the images are used as decoded, with one warning."""
    tmp = cached.with_name(cached.name + f".{os.getpid()}.tmp.npz")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, kept=np.array(kept, dtype=np.int64), **{f"i{n}": a for n, a in enumerate(images)})
        tmp.replace(cached)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if cached.parent.parent not in _WARNED:
            _WARNED.add(cached.parent.parent)
            warnings.warn(f"Decoded images are not cached: cannot write to {cached.parent} ({exc.strerror or exc}). "
                          "Runs decode the images each time; set FREEZEBENCH_CACHE to a writable folder to cache them.",
                          stacklevel=3)


_WARNED: set[Path] = set()


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
