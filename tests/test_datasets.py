"""Dataset plugins on the real ../shared/data (skipped without it) and on files made here."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from freezebench import plugins
from freezebench.errors import UserError
from freezebench.suite.protocols import SplitProtocol, apply_protocol

from .conftest import SHARED, SHIPPED_NPZ

DATA = SHARED / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")


def load(name, **options):
    return plugins.datasets().get(name).load(**options)


@needs_data
def test_brain_tumor_mri_reads_every_format_and_mode():
    ds = load("brain_tumor_mri", root=str(DATA / "brain-tumor-mri"))
    assert ds.counts() == {"all": {"no": 98, "yes": 155}}
    assert {im.ndim for im in ds.images} == {2, 3}  # grayscale and colour files, all decoded
    assert all(im.dtype == np.uint8 for im in ds.images)
    suffixes = {f.rsplit(".", 1)[1] for f in ds.meta["files"]}
    assert {"jpg", "JPG", "jpeg", "png"} <= suffixes


@needs_data
def test_oasis1_subject_ids_views_and_clinical_csv():
    axial = load("oasis1", root=str(DATA / "oasis1-slices"), view="axial")
    assert axial.counts() == {"all": {"cdr0": 98, "cdr_gt0": 98}}
    assert len(set(axial.groups)) == 196 and all(g.startswith("OAS1_") for g in axial.groups)
    every = load("oasis1", root=str(DATA / "oasis1-slices"), view="all")
    assert len(every.labels) == 3 * 196 and len(set(every.groups)) == 196
    assert every.meta["clinical"]["OAS1_0001_MR1"]["CDR"] in ("0", "0.5", "1")


@needs_data
def test_ph2_tasks():
    three = load("ph2", root=str(DATA / "ph2"))
    assert three.counts() == {"all": {"common_nevus": 80, "atypical_nevus": 80, "melanoma": 40}}
    melanoma = load("ph2", root=str(DATA / "ph2"), task="melanoma")
    assert melanoma.counts() == {"all": {"not_melanoma": 160, "melanoma": 40}}


@needs_data
@pytest.mark.parametrize("name,subdir,options,ratios", [
    ("brain_tumor_mri", "brain-tumor-mri", {}, (7, 1.5, 1.5)),
    ("oasis1", "oasis1-slices", {"view": "all"}, (5, 2, 3)),
    ("ph2", "ph2", {}, (7, 1, 2)),
])
def test_made_splits_are_stratified_subject_level_and_clean(name, subdir, options, ratios):
    ds = load(name, root=str(DATA / subdir), **options)
    split, report = apply_protocol(ds, SplitProtocol.from_options({"split": "ratio", "ratios": list(ratios)}, "t"))
    assert report.clean and split.split_source == "made"
    for subject in np.unique(split.groups):  # no subject in two splits
        assert len(set(split.split[split.groups == subject])) == 1
    total = np.array(ratios) / sum(ratios)
    shares = np.array([np.mean(split.split == s) for s in ("train", "val", "test")])
    assert np.allclose(shares, total, atol=0.05)
    for s in ("train", "val", "test"):  # every class in every split, in proportion
        labels = split.labels[split.split == s]
        assert len(np.unique(labels)) == len(ds.classes)
    again, _ = apply_protocol(ds, SplitProtocol.from_options({"split": "ratio", "ratios": list(ratios)}, "t"))
    assert again.split_hash() == split.split_hash()  # seeded
    other, _ = apply_protocol(ds, SplitProtocol.from_options({"split": "ratio", "ratios": list(ratios), "split_seed": 1}, "t"))
    assert other.split_hash() != split.split_hash()


@needs_data
def test_brain_mri_duplicates_stay_in_one_split_and_image_level_split_leaks():
    ds = load("brain_tumor_mri", root=str(DATA / "brain-tumor-mri"))
    from freezebench.suite.leakage import near_duplicate_pairs

    pairs = near_duplicate_pairs(ds.images)
    assert len(pairs) >= 50  # the Kaggle set holds repeated images
    split, report = apply_protocol(ds, SplitProtocol.from_options({"split": "ratio"}, "t"))
    assert all(split.split[i] == split.split[j] for i, j in pairs) and report.clean
    leaky, report = apply_protocol(ds, SplitProtocol.from_options({"split": "ratio", "level": "image"}, "t"))
    assert report.duplicates and "image level" in report.summary()


@needs_data
def test_kfold_is_subject_level_and_covers_everything():
    ds = load("oasis1", root=str(DATA / "oasis1-slices"), view="all")
    tests = []
    for fold in range(5):
        split, report = apply_protocol(ds, SplitProtocol.from_options({"split": "kfold", "folds": 5, "fold": fold}, "t"))
        assert report.clean
        tests.append(set(split.groups[split.split == "test"]))
        for subject in np.unique(split.groups):
            assert len(set(split.split[split.groups == subject])) == 1
    assert set().union(*tests) == set(ds.groups)
    assert all(not (a & b) for i, a in enumerate(tests) for b in tests[i + 1:])


def _write_images(folder, n, seed, size=(40, 32), mode="L"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.integers(0, 255, (size[1], size[0]) if mode == "L" else (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{seed}_{i}.png")


def test_csv_manifest_given_splits_and_planted_leaks(tmp_path):
    for c, seed in (("a", 1), ("b", 2)):
        _write_images(tmp_path / c, 6, seed)
    files = sorted(tmp_path.glob("*/*.png"))
    rows = ["path,label,subject,split"]
    for i, f in enumerate(files):
        rows.append(f"{f.relative_to(tmp_path)},{f.parent.name},s{i},{['train', 'train', 'val', 'test'][i % 4] if i % 6 else 'train'}")
    # plant a leak: the first image again, as another subject, in the test split
    shutil.copy(files[0], tmp_path / "a" / "copy.png")
    rows.append("a/copy.png,a,s99,test")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    ds = load("csv_manifest", path=str(tmp_path / "m.csv"))
    split, report = apply_protocol(ds, SplitProtocol())
    assert split.split_source == "given" and len(report.duplicates) == 1
    # a subject in two splits is found too
    (tmp_path / "m.csv").write_text("\n".join(rows[:-1] + ["a/copy.png,a,s0,test"]) + "\n")
    _, report = apply_protocol(load("csv_manifest", path=str(tmp_path / "m.csv")), SplitProtocol())
    assert report.subjects == {"s0": ["test", "train"]}


def test_csv_manifest_rows_without_files(tmp_path):
    _write_images(tmp_path / "a", 2, 1)
    (tmp_path / "m.csv").write_text("path,label\na/img1_0.png,a\na/missing.png,b\n")
    with pytest.raises(UserError, match=r"1 rows name files that do not exist, e.g. \['a/missing.png'\]"):
        load("csv_manifest", path=str(tmp_path / "m.csv"))


def test_corrupt_image_named_then_fatal_or_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("FREEZEBENCH_CACHE", str(tmp_path / "cache"))
    _write_images(tmp_path / "data" / "a", 4, 1)
    _write_images(tmp_path / "data" / "b", 4, 2, mode="RGB")
    bad = tmp_path / "data" / "b" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UserError, match="Cannot read image .*broken.jpg.*on_error = \"skip\""):
        load("image_folder", root=str(tmp_path / "data"))
    with pytest.warns(UserWarning, match="broken.jpg"):
        ds = load("image_folder", root=str(tmp_path / "data"), on_error="skip")
    assert ds.counts() == {"all": {"a": 4, "b": 4}}


def test_image_modes_are_decoded(tmp_path):
    folder = tmp_path / "d" / "x"
    folder.mkdir(parents=True)
    Image.new("RGBA", (10, 8), (255, 0, 0, 128)).save(folder / "rgba.png")
    Image.new("RGB", (10, 8), (0, 0, 255)).convert("P").save(folder / "p.bmp")  # a colour palette
    Image.new("L", (7, 9), 200).save(folder / "l.JPG")
    Image.new("RGB", (12, 5), (0, 255, 0)).save(folder / "rgb.jpeg")
    _write_images(tmp_path / "d" / "y", 2, 3)
    ds = load("image_folder", root=str(tmp_path / "d"))
    shapes = sorted(im.shape for im in ds.images[:4])
    assert shapes == sorted([(8, 10, 3), (8, 10, 3), (9, 7), (5, 12, 3)])


def test_empty_class_and_missing_root(tmp_path):
    _write_images(tmp_path / "a", 3, 1)
    (tmp_path / "b").mkdir()
    with pytest.raises(UserError, match=r"class folder .*/b holds no images"):
        load("image_folder", root=str(tmp_path))
    with pytest.raises(UserError, match="folder /nowhere does not exist"):
        load("image_folder", root="/nowhere")


def test_split_left_with_one_class(tmp_path):
    _write_images(tmp_path / "a", 8, 1)
    _write_images(tmp_path / "b", 1, 2)
    ds = load("image_folder", root=str(tmp_path))
    with pytest.raises(UserError, match="split '(val|test)' holds only class 'a'"):
        apply_protocol(ds, SplitProtocol.from_options({"split": "ratio"}, "t"))


@pytest.fixture
def http_dir(tmp_path):
    served = tmp_path / "srv"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_medmnist_download_verifies_md5(http_dir, tmp_path):
    served, base = http_dir
    shutil.copy(SHIPPED_NPZ, served / "breastmnist.npz")
    md5 = hashlib.md5(SHIPPED_NPZ.read_bytes()).hexdigest()
    root = tmp_path / "medmnist"
    ds = load("medmnist", flag="breastmnist", root=str(root), url=f"{base}/breastmnist.npz", md5=md5)
    assert (root / "breastmnist.npz").is_file() and ds.counts()["train"] == {"0": 147, "1": 399}
    # the official MD5 is checked: the shipped copy is a re-save, so it is refused
    (root / "breastmnist.npz").unlink()
    with pytest.raises(UserError, match="wrong MD5 .*750601b1f35ba3300ea97c75c52ff8f6.*nothing was kept"):
        load("medmnist", flag="breastmnist", root=str(root), url=f"{base}/breastmnist.npz")
    assert not list(root.iterdir())
    with pytest.raises(UserError, match="Could not download breastmnist .*missing.npz"):
        load("medmnist", flag="breastmnist", root=str(root), url=f"{base}/missing.npz")
    with pytest.raises(UserError, match="Unknown MedMNIST flag 'chestmnist'"):
        load("medmnist", flag="chestmnist", root=str(root))
