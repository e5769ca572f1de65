"""Reading one image: decode a file (PIL) to uint8, make it 3-channel, resize it to the trial's square
size, and fingerprint it for the leak audit. Whole datasets of files: ``freezebench.imagefiles``."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .records import RESIZE_MODES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
ON_ERROR = ("fail", "skip")
FINGERPRINT_BYTES = 32   # a 256-bit difference hash ...
THUMB_SIDE = 32          # ... and a 32 x 32 grey thumbnail, per image


def cache_dir() -> Path:
    return Path(os.environ.get("FREEZEBENCH_CACHE") or Path.home() / ".cache" / "freezebench")


def decode(source: Path | bytes) -> np.ndarray:
    """uint8 (H, W) for grayscale images, (H, W, 3) for colour; alpha and palettes flattened.
    ``source`` is a path or the file's bytes."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
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


def to_rgb(image: np.ndarray) -> Image.Image:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L").convert("RGB")
    if arr.ndim == 3 and arr.shape[2] == 3:
        return Image.fromarray(arr, mode="RGB")
    if arr.ndim == 3 and arr.shape[2] == 1:
        return Image.fromarray(arr[:, :, 0], mode="L").convert("RGB")
    raise ValueError(f"image of shape {arr.shape}: expected (H, W) or (H, W, 3)")


def _pad_square(pil: Image.Image) -> Image.Image:
    side = max(pil.size)
    canvas = Image.new("RGB", (side, side))
    canvas.paste(pil, ((side - pil.size[0]) // 2, (side - pil.size[1]) // 2))
    return canvas


def resize_one(image: np.ndarray, size: int, mode: str = "stretch") -> np.ndarray:
    """One image as ``size`` x ``size`` RGB (grayscale repeated to 3 channels): uint8 (3, S, S).

    ``mode="stretch"`` resizes to the square; ``"pad"`` keeps the aspect ratio, padding with black.
    Every path that turns pixels into model input goes through here, so cached and in-memory data agree.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, not {mode!r}")
    pil = to_rgb(image)
    if mode == "pad" and pil.size[0] != pil.size[1]:
        pil = _pad_square(pil)
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.BILINEAR)
    return np.asarray(pil).transpose(2, 0, 1)


def fingerprint(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(256-bit difference hash as 32 bytes, standardised 32x32 grey thumbnail): what the leak audit
    compares to find identical or near-identical pictures."""
    gray = Image.fromarray(np.asarray(image)).convert("L")
    small = np.asarray(gray.resize((17, 16), Image.BILINEAR), dtype=np.int16)
    bits = np.packbits((small[:, 1:] > small[:, :-1]).ravel())
    thumb = np.asarray(gray.resize((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR), dtype=np.float32).ravel()
    return bits, (thumb - thumb.mean()) / (thumb.std() + 1e-6)


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
