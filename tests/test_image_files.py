"""Folder datasets read lazily: the same pixels, leak pairs and trial metrics as the same images held in
memory; a rerun decodes nothing; changed, deleted and damaged files and cache entries are named or
rebuilt; and no native-resolution pixels are kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from freezebench import imagefiles, plugins
from freezebench.backbone import WeightsRequest
from freezebench.dataset import ImageDataset
from freezebench.engine.trial import DataCache, TrialConfig, run_trial
from freezebench.errors import UserError
from freezebench.imagefiles import ImageFiles, decode_files, resize_all
from freezebench.suite.leakage import BLOCK, near_duplicate_pairs


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("FREEZEBENCH_CACHE", str(folder))
    return folder


def _images(folder, n=24, seed=0):
    """Grey and colour images of different shapes (not square, odd sides), as files: their paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        shape = (37 + i, 51) if i % 3 == 0 else (45, 29 + i, 3)
        field = rng.integers(0, 256, (5, 5, 3) if len(shape) == 3 else (5, 5), dtype=np.uint8)
        image = Image.fromarray(field).resize(shape[1::-1], Image.BILINEAR)
        paths.append(folder / f"im{i:03d}.{'png' if i % 2 else 'jpg'}")
        image.save(paths[-1])
    return paths


def _forbid_decoding(monkeypatch):
    def refuse(*_):
        raise AssertionError("a file was decoded")

    monkeypatch.setattr(imagefiles, "decode", refuse)


@pytest.mark.parametrize("mode", ["stretch", "pad"])
def test_files_and_the_same_images_in_memory_give_the_same_pixels_and_leak_pairs(tmp_path, cache, mode):
    paths = _images(tmp_path / "imgs")
    Image.open(paths[4]).save(tmp_path / "imgs" / "copy.png")  # a duplicate, for the audit
    files, kept = decode_files(paths + [tmp_path / "imgs" / "copy.png"])
    arrays = [files[i] for i in range(len(files))]
    assert isinstance(files, ImageFiles) and kept == list(range(len(paths) + 1))
    for size in (16, 33):
        on_disk, in_memory = resize_all(files, size, mode), resize_all(arrays, size, mode)
        assert isinstance(on_disk, np.memmap) and on_disk.shape == (len(arrays), 3, size, size)
        assert np.array_equal(on_disk, in_memory)
    assert near_duplicate_pairs(files) == near_duplicate_pairs(arrays) == [(4, len(paths))]
    idx = [5, 24, 0, 4, 3]  # a subset, out of order, holding the duplicate pair reversed
    assert np.array_equal(resize_all(files[idx], 20, mode), resize_all(arrays, 20, mode)[idx])
    assert near_duplicate_pairs(files[idx]) == [(1, 3)]
    joined = files[[0, 1]] + files[[4, 24]]
    assert isinstance(joined, ImageFiles) and near_duplicate_pairs(joined) == [(2, 3)]


def test_a_rerun_decodes_nothing_and_keeps_no_native_pixels(tmp_path, cache, monkeypatch):
    paths = _images(tmp_path / "imgs", n=12)
    files, _ = decode_files(paths)
    first = np.array(files.resized(24))
    # the loaded set holds fingerprints only: 32 bytes and a 32x32 thumbnail per image, whatever the files' size
    assert not any(isinstance(v, np.ndarray) and v.nbytes > 12 * 32 * 32 * 4 for v in vars(files).values())
    _forbid_decoding(monkeypatch)
    again, kept = decode_files(paths)  # from the index: each file is read for its digest, none decoded
    assert kept == list(range(12)) and again.key == files.key
    assert np.array_equal(again.resized(24), first)  # from the resized cache
    with pytest.raises(AssertionError, match="decoded"):
        again.resized(25)  # a size never made: the only case that decodes


def test_a_file_changed_or_deleted_after_loading_is_named(tmp_path, cache):
    paths = _images(tmp_path / "imgs", n=6)
    files, _ = decode_files(paths)
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(paths[2])
    with pytest.raises(UserError, match=r"im002\.jpg changed after its dataset was loaded"):
        files.resized(16)
    paths[3].unlink()
    with pytest.raises(UserError, match=r"Cannot read image .*im003\.png any more"):
        files[3]
    resized = cache / "resized"
    assert not resized.exists() or list(resized.iterdir()) == []  # nothing half-written, no temporary left


def test_a_damaged_resized_entry_is_rebuilt(tmp_path, cache):
    paths = _images(tmp_path / "imgs", n=5)
    files, _ = decode_files(paths)
    good = np.array(files.resized(16))
    (entry,) = (cache / "resized").glob("*.npy")
    entry.write_bytes(entry.read_bytes()[:200])  # truncated: a full disk when it was written by an older version
    assert np.array_equal(files.resized(16), good)


def test_an_unwritable_cache_resizes_in_memory_with_a_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("FREEZEBENCH_CACHE", str(blocker / "sub"))
    monkeypatch.setattr(imagefiles, "_WARNED", set())
    paths = _images(tmp_path / "imgs", n=4)
    with pytest.warns(UserWarning, match="not cached"):
        files, _ = decode_files(paths)
        pixels = files.resized(16)
    assert not isinstance(pixels, np.memmap)
    assert np.array_equal(pixels, resize_all([files[i] for i in range(4)], 16))


def test_blocked_duplicate_search_matches_all_pairs(tmp_path):
    rng = np.random.default_rng(1)
    n = BLOCK * 2 + 17  # pairs across block boundaries
    arrays = [np.asarray(Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).resize((24, 24)))
              for _ in range(n)]
    planted = [(3, BLOCK + 5), (BLOCK - 1, BLOCK), (10, n - 1)]
    for i, j in planted:
        arrays[j] = arrays[i].copy()
    arrays[planted[0][1]][0, 0] ^= 1  # near, not identical
    assert near_duplicate_pairs(arrays) == sorted(planted)


def test_a_trial_on_files_equals_the_trial_on_the_same_images_in_memory(tmp_path, cache):
    paths = _images(tmp_path / "imgs", n=36)
    files, _ = decode_files(paths)
    labels = np.arange(36) % 2
    split = np.array(["train"] * 20 + ["val"] * 8 + ["test"] * 8)
    common = dict(name="pair", classes=("a", "b"), labels=labels, split=split, groups=np.arange(36).astype(str))
    on_disk = ImageDataset(images=files, **common)
    in_memory = ImageDataset(images=[files[i] for i in range(36)], **common)
    outcomes = []
    for dataset in (on_disk, in_memory):
        cfg = TrialConfig(strategy="freeze_to", strategy_params={"k": 5}, lr=0.01, epochs=2, batch_size=8, image_size=32)
        result = run_trial(cfg, dataset, plugins.backbones().get("mobilenetv2_100"), WeightsRequest(True),
                           plugins.strategies().get("freeze_to"), DataCache())
        outcomes.append(result)
    (a, b) = outcomes
    assert a.outcome.test == b.outcome.test and a.outcome.best_val == b.outcome.best_val
    assert np.array_equal(a.outputs.logits, b.outputs.logits)


def test_sizes_announced_at_loading_are_resized_in_the_same_pass(tmp_path, cache, monkeypatch):
    paths = _images(tmp_path / "imgs", n=10)
    with imagefiles.sizes_ahead({(16, "stretch"), (20, "pad")}):
        files, _ = decode_files(paths)
    reference = [files[i] for i in range(10)]
    _forbid_decoding(monkeypatch)  # training at an announced size decodes nothing more
    for size, mode in ((16, "stretch"), (20, "pad")):
        rows = [7, 2, 2, 9]
        expected = np.stack([imagefiles.resize_one(reference[i], size, mode) for i in rows])
        got = resize_all(files, size, mode, rows=rows)
        assert not isinstance(got, np.memmap) and np.array_equal(got, expected)
    assert sorted(p.name.endswith(".npy") for p in (cache / "resized").iterdir()) == [True, True]


def test_a_skipped_file_leaves_no_resized_copy_behind(tmp_path, cache):
    paths = _images(tmp_path / "imgs", n=6)
    paths[4].write_bytes(b"not an image")
    with imagefiles.sizes_ahead({(16, "stretch")}), pytest.warns(UserWarning, match=r"im004\.jpg.*skipped"):
        files, kept = decode_files(paths, on_error="skip")
    assert kept == [0, 1, 2, 3, 5] and not list((cache / "resized").glob("*"))  # keyed by all six: dropped
    with imagefiles.sizes_ahead({(16, "stretch")}), pytest.raises(UserError, match=r"im004\.jpg"):
        decode_files(paths)  # on_error = "fail": named, nothing written
    assert not list((cache / "resized").glob("*"))
    assert np.array_equal(files.resized(16), resize_all([files[i] for i in range(5)], 16))


def test_a_full_disk_while_resizing_ahead_loads_the_dataset_anyway(tmp_path, cache, monkeypatch):
    import errno

    paths = _images(tmp_path / "imgs", n=5)
    write = imagefiles._NpyOut.write

    def full(self, row):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(imagefiles._NpyOut, "write", full)
    monkeypatch.setattr(imagefiles, "_WARNED", set())
    with imagefiles.sizes_ahead({(16, "stretch")}), pytest.warns(UserWarning, match="No space left on device"):
        files, kept = decode_files(paths)
    assert kept == list(range(5)) and not list((cache / "resized").glob("*"))  # no temporary left either
    monkeypatch.setattr(imagefiles._NpyOut, "write", write)
    assert np.array_equal(files.resized(16), resize_all([files[i] for i in range(5)], 16))


def test_a_file_name_that_is_not_utf8_loads_and_caches(tmp_path, cache):
    import os

    folder = tmp_path / "imgs"
    (good,) = _images(folder, n=1)
    odd = Path(os.fsdecode(bytes(folder) + b"/scan-\xff\xfe.png"))  # bytes that are no UTF-8: a surrogate-escaped name
    Image.fromarray(np.full((9, 9), 5, np.uint8)).save(odd)
    files, kept = decode_files([good, odd])
    assert kept == [0, 1] and files.resized(8).shape == (2, 3, 8, 8) and int(files[1][0, 0]) == 5


def test_temporary_files_of_a_killed_writer_are_swept_and_a_live_writers_are_kept(tmp_path, cache):
    """kill -9 while a cache entry is written leaves ``<entry>.<pid>.tmp``: the next writer of that entry
    removes it once its process is gone and the file is old, never a file a live process is writing."""
    import os
    import subprocess
    import sys
    import time

    paths = _images(tmp_path / "imgs", n=4)
    files, _ = decode_files(paths)
    target = files._resized_path(16, "stretch")
    target.parent.mkdir(parents=True, exist_ok=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)  # a process that has exited
    old = time.time() - 2 * imagefiles.ORPHAN_AGE_S
    orphan, young, live = (target.with_name(f"{target.name}.{dead_pid}.tmp"), target.with_name(f"{target.name}.{dead_pid}.tmp.npz"),
                           target.with_name(f"{target.name}.{os.getppid()}.tmp"))
    for f in (orphan, young, live):
        f.write_bytes(b"\0" * 1000)
    for f in (orphan, live):
        os.utime(f, (old, old))
    got = files.resized(16)
    assert target.is_file() and got.shape == (4, 3, 16, 16)
    assert not orphan.exists()  # its writer is gone and it is old
    assert young.exists() and live.exists()  # recently written, or its writer still runs
