"""Datasets of image files, read so that memory follows what training uses, not the files' pixels.

``decode_files`` hashes every file and, unless its index is cached, decodes each once: whether it
decodes (the error policy) and its leak-audit fingerprint; sizes announced with ``sizes_ahead`` are
resized in the same pass. It keeps no pixels: the result, ``ImageFiles``, is a sequence that decodes
an image when asked. ``resized(size, mode)`` gives the whole set at one training size as a
``(N, 3, S, S)`` uint8 array, decoded in parallel and cached on disk (memory-mapped when read back;
``rows`` are read without mapping), so a folder of 20,000 large images costs 20,000 x 3 x S x S
bytes, and a rerun decodes nothing.

Both caches live under ``cache_dir()`` and are keyed by the files' content (names and bytes):
``index/KEY.npz`` (what decoded, fingerprints) and ``resized/KEY-SIZE-MODE.npy``. Entries are written
atomically; a damaged one is rebuilt; an unwritable cache is skipped with one warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError
from .imageio import FINGERPRINT_BYTES, ON_ERROR, THUMB_SIDE, cache_dir, decode, fingerprint, resize_one

DECODE_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError)
CHUNK = 256  # images in flight per batch of parallel work: bounds memory whatever the dataset's size
_INDEX_VERSION = "index-v2"
_WARNED: set[Path] = set()
_AHEAD: list[set[tuple[int, str]]] = [set()]


@contextlib.contextmanager
def sizes_ahead(sizes: set[tuple[int, str]]):
    """While loading datasets in this block, also write their resized copies at these (size, mode)
    pairs, in the same pass that checks the files: a first run then decodes each image once, not twice."""
    _AHEAD.append(set(sizes))
    try:
        yield
    finally:
        _AHEAD.pop()


def workers() -> int:
    """Threads for decoding and resizing (PIL releases the GIL for both): the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _content_key(salt: str, paths: Sequence[Path], digests: Sequence[bytes]) -> str:
    """A cache key for files by their names and contents (a name that is not UTF-8 included)."""
    h = hashlib.sha256(salt.encode())
    for p, d in zip(paths, digests):
        h.update(os.fsencode(p.name) + b"\0" + d)
    return h.hexdigest()[:24]


def _stacked(rows: Iterator[np.ndarray], shape: tuple) -> np.ndarray:
    """``rows`` (each ``shape[1:]``) into one uint8 array of ``shape``, in memory."""
    out = np.empty(shape, np.uint8)
    for i, row in enumerate(rows):
        out[i] = row
    return out


def _in_order(fn: Callable[[int], object], n: int) -> Iterator[object]:
    """``fn(i)`` for i in 0..n-1, computed in parallel, yielded in order, at most CHUNK results held."""
    with ThreadPoolExecutor(max_workers=workers()) as pool:
        for start in range(0, n, CHUNK):
            yield from pool.map(fn, range(start, min(n, start + CHUNK)))


class ImageFiles(Sequence):
    """Image files as a sequence of decoded uint8 arrays, read on demand (see the module docstring).

    Indexing with an int decodes that file (checking it still has the content it was loaded with);
    indexing with a slice or an index array, and ``+`` with another ``ImageFiles``, give new sets
    without reading anything.
    """

    def __init__(self, paths: Sequence[Path], digests: Sequence[bytes], bits: np.ndarray, thumbs: np.ndarray,
                 cache: bool = True):
        self.paths, self.digests = [Path(p) for p in paths], list(digests)
        self.bits, self.thumbs, self.cache = bits, thumbs, cache

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, (int, np.integer)):
            return decode(self._bytes(int(i)))
        idx = np.arange(len(self))[i] if isinstance(i, slice) else np.asarray(i, dtype=np.int64).ravel()
        return ImageFiles([self.paths[j] for j in idx], [self.digests[j] for j in idx], self.bits[idx], self.thumbs[idx],
                          self.cache)

    def __add__(self, other: "ImageFiles") -> "ImageFiles":
        return ImageFiles(self.paths + other.paths, self.digests + other.digests, np.concatenate([self.bits, other.bits]),
                          np.concatenate([self.thumbs, other.thumbs]), self.cache and other.cache)

    def __repr__(self) -> str:
        return f"ImageFiles({len(self)} files, key {self.key})"

    @property
    def key(self) -> str:
        return _content_key("images-v1", self.paths, self.digests)

    def fingerprints(self) -> tuple[np.ndarray, np.ndarray]:
        return self.bits, self.thumbs

    def _bytes(self, i: int) -> bytes:
        path = self.paths[i]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"Cannot read image {path} any more ({exc.strerror or exc}): was it moved or deleted "
                            "during the run? Put it back, or run again to load the folder as it is now.") from None
        if hashlib.sha256(data).digest() != self.digests[i]:
            raise UserError(f"Image {path} changed after its dataset was loaded. Run again to load the folder as it is now.")
        return data

    def _resized_path(self, size: int, mode: str) -> Path:
        return cache_dir() / "resized" / f"{self.key}-{size}-{mode}.npy"

    def resized(self, size: int, mode: str = "stretch", rows=None) -> np.ndarray:
        """The images at ``size`` x ``size``: uint8 (N, 3, S, S), memory-mapped from the disk cache when it can
        be. With ``rows`` (indices), only those images, read from the cache into memory without mapping it."""
        target, shape = self._resized_path(size, mode), (len(self), 3, size, size)

        def one(i) -> np.ndarray:
            return resize_one(decode(self._bytes(int(i))), size, mode)

        if self.cache and not _valid_npy(target, shape):
            try:
                _write_npy(target, shape, _in_order(one, len(self)))
            except OSError as exc:  # read-only, full, not ours: work in memory
                _warn_uncached(target.parent, exc)
        if self.cache and _valid_npy(target, shape):
            return np.load(target, mmap_mode="c", allow_pickle=False) if rows is None else _read_rows(target, shape, rows)
        idx = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        return _stacked(_in_order(lambda j: one(idx[j]), len(idx)), (len(idx), 3, size, size))


def _valid_npy(path: Path, shape: tuple) -> bool:
    """A whole cache entry of this shape (a truncated or foreign file is not)."""
    try:
        with open(path, "rb") as f:
            np.lib.format.read_magic(f)
            found, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            return (found == shape and not fortran and dtype == np.uint8
                    and path.stat().st_size == f.tell() + int(np.prod(shape)))
    except (OSError, ValueError):
        return False


def _read_rows(path: Path, shape: tuple, rows) -> np.ndarray:
    """Rows of a cached array, read (not mapped): memory holds them once, as the caller's copy."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows),) + tuple(shape[1:]), np.uint8)
    size = out[0].nbytes if len(rows) else 0
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        offset = f.tell()
        for j, i in enumerate(rows):
            f.seek(offset + int(i) * size)
            if f.readinto(memoryview(out[j]).cast("B")) != size:
                raise OSError(f"{path} is shorter than its header says")
    return out


ORPHAN_AGE_S = 600  # a temporary file this long untouched, of a process that is gone, is an orphan


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def sweep_orphans(target: Path) -> None:
    """Remove the temporary files (or folders) a killed writer of ``target`` left (``<target>.<pid>.tmp*``):
    those of a process that is gone and untouched for ``ORPHAN_AGE_S`` (a writer on another machine sharing
    the cache keeps writing, so its file stays young). Without this, each kill -9 mid-write leaks a file the
    size of the entry."""
    import shutil
    import time

    for tmp in target.parent.glob(f"{target.name}.*.tmp*"):
        pid = tmp.name[len(target.name) + 1:].split(".", 1)[0]
        with contextlib.suppress(OSError):
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)) and \
                    time.time() - tmp.stat().st_mtime > ORPHAN_AGE_S:
                shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()


class _NpyOut:
    """A .npy file written row by row under a temporary name; ``commit`` renames it into place (whole or
    not at all), ``abandon`` removes it."""

    def __init__(self, target: Path, shape: tuple):
        self.target, self.tmp = target, target.with_name(f"{target.name}.{os.getpid()}.tmp")
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_orphans(target)
        self.file = open(self.tmp, "wb")
        np.lib.format.write_array_header_1_0(self.file, {"descr": "|u1", "fortran_order": False, "shape": shape})

    def write(self, row: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(row, dtype=np.uint8).tobytes())

    def commit(self) -> None:
        self.file.close()
        self.tmp.replace(self.target)

    def abandon(self) -> None:
        self.file.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink(missing_ok=True)


def _write_npy(target: Path, shape: tuple, rows: Iterator[np.ndarray]) -> None:
    """Stream ``rows`` into a .npy file, atomically: the file appears whole or not at all."""
    out = _NpyOut(target, shape)
    try:
        for row in rows:
            out.write(row)
        out.commit()
    except BaseException:
        out.abandon()
        raise


def resize_all(images, size: int, mode: str = "stretch", rows=None) -> np.ndarray:
    """Any dataset's images (or those at ``rows``) at one training size, uint8 (N, 3, S, S): files through
    their disk cache, in-memory arrays resized in parallel. Both go through ``resize_one``: the same pixels."""
    if isinstance(images, ImageFiles):
        return images.resized(size, mode, rows)
    idx = range(len(images)) if rows is None else [int(i) for i in rows]
    return _stacked(_in_order(lambda j: resize_one(images[idx[j]], size, mode), len(idx)), (len(idx), 3, size, size))


def fingerprints(images) -> tuple[np.ndarray, np.ndarray]:
    """Leak-audit fingerprints of any dataset's images: (N, 32) hash bytes and (N, 1024) thumbnails."""
    if isinstance(images, ImageFiles):
        return images.fingerprints()
    if len(images) == 0:
        return np.zeros((0, FINGERPRINT_BYTES), np.uint8), np.zeros((0, THUMB_SIDE**2), np.float32)
    found = list(_in_order(lambda i: fingerprint(images[i]), len(images)))
    return np.stack([b for b, _ in found]), np.stack([t for _, t in found])


def take(images, idx) -> Sequence:
    """The images at ``idx``, without decoding files."""
    return images[np.asarray(idx, dtype=np.int64)] if isinstance(images, ImageFiles) else [images[i] for i in idx]


def join(first, second) -> Sequence:
    if isinstance(first, ImageFiles) and isinstance(second, ImageFiles):
        return first + second
    return list(first) + list(second)


def read_images(paths: Sequence[Path]) -> Iterator[np.ndarray]:
    """Decode files in order, in parallel, a bounded number at a time (memory does not grow with the list).
    A file that cannot be read stops the iteration with a ``UserError`` naming it."""

    def read(i):
        try:
            return decode(Path(paths[i]))
        except DECODE_ERRORS as exc:
            return exc

    for i, found in enumerate(_in_order(read, len(paths))):
        if isinstance(found, BaseException):
            raise UserError(f"Cannot read image {paths[i]}: {type(found).__name__}: {found}")
        yield found


def _digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def decode_files(paths: Sequence[Path], on_error: str = "fail", *, cache: bool = True) -> tuple[ImageFiles, list[int]]:
    """Check that every file decodes; return them as ``ImageFiles`` and the indices (into ``paths``) kept.

    A corrupt or unreadable file is named, then skipped (``on_error="skip"``, with a warning) or fatal
    (``"fail"``, the default). What was learnt is cached by the files' content, so a rerun reads each
    file once (for its digest) and decodes none.
    """
    if on_error not in ON_ERROR:
        raise UserError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
    paths = [Path(p) for p in paths]
    try:
        digests = list(_in_order(lambda i: _digest(paths[i]), len(paths)))
    except OSError as exc:
        raise UserError(f"Cannot read image {exc.filename}: {exc.strerror or exc}. Fix its permissions or remove it.") from None
    index = cache_dir() / "index" / f"{_content_key(f'{_INDEX_VERSION}:{on_error}', paths, digests)}.npz"
    if cache and index.is_file():
        with contextlib.suppress(Exception):  # a damaged entry: read the files again
            with np.load(index, allow_pickle=False) as npz:
                kept = npz["kept"].tolist()
                return ImageFiles([paths[i] for i in kept], [digests[i] for i in kept], npz["bits"], npz["thumbs"], cache), kept

    loaded = ImageFiles(paths, digests, np.zeros((len(paths), 0)), np.zeros((len(paths), 0)), cache)
    ahead = _ahead_outputs(loaded) if cache else {}

    def check(i):
        try:
            data = paths[i].read_bytes()
            image = decode(data)
            return fingerprint(image), [resize_one(image, size, mode) for size, mode in ahead], hashlib.sha256(data).digest()
        except DECODE_ERRORS as exc:
            return exc

    kept, bits, thumbs = [], [], []
    try:
        for i, found in enumerate(_in_order(check, len(paths))):
            if isinstance(found, BaseException):
                message = f"Cannot read image {paths[i]}: {type(found).__name__}: {found}"
                if on_error == "fail":
                    raise UserError(message + ". Fix or remove the file, or set on_error = \"skip\" for this dataset.") from None
                warnings.warn(message + " (skipped: on_error = \"skip\")", stacklevel=2)
                for out in ahead.values():  # keyed by all the files: of no use for the ones kept
                    out.abandon()
                ahead = {}
                continue
            (b, t), rows, digest = found
            if digest != digests[i]:  # rewritten between the digest pass and this one
                raise UserError(f"Image {paths[i]} changed while its dataset was loaded. Run again once it is written.")
            for out, row in zip(list(ahead.values()), rows):
                out.write(row)
            kept.append(i)
            bits.append(b)
            thumbs.append(t)
        for out in ahead.values():
            out.commit()
    except BaseException as exc:
        for out in ahead.values():
            out.abandon()
        if isinstance(exc, OSError) and ahead:  # a resized copy could not be written (a full disk): go on without it
            _warn_uncached(next(iter(ahead.values())).target.parent, exc)
            return _without_ahead(paths, on_error, cache)
        raise
    bits = np.stack(bits) if bits else np.zeros((0, FINGERPRINT_BYTES), np.uint8)
    thumbs = np.stack(thumbs) if thumbs else np.zeros((0, THUMB_SIDE**2), np.float32)
    if cache:
        _store(index, kept=np.array(kept, dtype=np.int64), bits=bits, thumbs=thumbs)
    return ImageFiles([paths[i] for i in kept], [digests[i] for i in kept], bits, thumbs, cache), kept


def _without_ahead(paths, on_error, cache):
    with sizes_ahead(set()):
        return decode_files(paths, on_error, cache=cache)


def _ahead_outputs(files: ImageFiles) -> dict[tuple[int, str], _NpyOut]:
    """Open the resized copies announced by ``sizes_ahead`` that the cache lacks (none when it is unwritable)."""
    outputs = {}
    for size, mode in sorted(_AHEAD[-1]):
        shape = (len(files), 3, size, size)
        if _valid_npy(files._resized_path(size, mode), shape):
            continue
        try:
            outputs[(size, mode)] = _NpyOut(files._resized_path(size, mode), shape)
        except OSError as exc:
            _warn_uncached(files._resized_path(size, mode).parent, exc)
            break
    return outputs


def _store(target: Path, **arrays) -> None:
    """Write a cache entry atomically (a reader never sees half a file); skipped with one warning when
    the cache cannot be written (read-only, full, not ours)."""
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp.npz")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_orphans(target)
        np.savez(tmp, **arrays)
        tmp.replace(target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        _warn_uncached(target.parent, exc)


def _warn_uncached(folder: Path, exc: OSError) -> None:
    if folder.parent not in _WARNED:
        _WARNED.add(folder.parent)
        warnings.warn(f"Decoded images are not cached: cannot write to {folder} ({exc.strerror or exc}). Runs decode the "
                      "images each time; set FREEZEBENCH_CACHE to a writable folder to cache them.", stacklevel=4)
