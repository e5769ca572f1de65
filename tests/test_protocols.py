"""Volumes, external test sets, augmentation, class balance, padding, and suite-level protocol
handling (missing data skipped, leaks blocked, --allow-leaks flagged in MLflow)."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest
import torch

from freezebench import plugins
from freezebench.engine.augment import augment_array, augment_batch
from freezebench.errors import UserError
from freezebench.engine.preprocess import resize_images
from freezebench.suite.protocols import SplitProtocol, apply_protocol
from freezebench.engine.trial import DataCache

from .conftest import SHARED, write_suite


def _volume(shape, value):
    rng = np.random.default_rng(int(value))
    return (rng.random(shape) * 100 + value).astype(np.float32)


@pytest.fixture
def volume_dir(tmp_path):
    root = tmp_path / "vols"
    root.mkdir()
    rows = ["file,label,subject"]
    for i in range(8):
        label = "ad" if i % 2 else "nc"
        data = _volume((20, 24, 16), i * 10)
        if i < 4:  # NIfTI, compressed and not
            name = f"sub{i}.nii.gz" if i % 2 else f"sub{i}.nii"
            nib.save(nib.Nifti1Image(data, np.eye(4)), str(root / name))
        else:  # Analyze 7.5: .hdr + .img
            name = f"sub{i}.hdr"
            nib.save(nib.AnalyzeImage(data, np.eye(4)), str(root / name))
        rows.append(f"{name},{label},S{i}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def load(name, **options):
    return plugins.datasets().get(name).load(**options)


def test_volumes_take_mid_slices_one_subject_per_volume(volume_dir):
    assert (volume_dir / "sub4.img").is_file()
    ds = load("volumes", root=str(volume_dir), slices=6, axis=2)
    assert len(ds.labels) == 8 * 6 and ds.classes == ("ad", "nc")
    assert {im.shape for im in ds.images} == {(20, 24)} and ds.images[0].dtype == np.uint8
    assert sorted(set(ds.groups)) == [f"S{i}" for i in range(8)]
    other_axis = load("volumes", root=str(volume_dir), slices=4, axis=0)
    assert {im.shape for im in other_axis.images} == {(24, 16)}
    split, report = apply_protocol(ds, SplitProtocol.from_options({"split": "ratio", "ratios": [2, 1, 1]}, "t"))
    for s in set(split.groups):  # the slices of one volume never straddle splits
        assert len(set(split.split[split.groups == s])) == 1


def test_volume_errors(volume_dir):
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5, 3), np.float32), np.eye(4)), str(volume_dir / "four.nii"))
    with pytest.raises(UserError, match=r"volumes without a row in .*labels.csv: \['four'\]"):
        load("volumes", root=str(volume_dir), slices=4)
    with open(volume_dir / "labels.csv", "a") as f:
        f.write("four.nii,ad,S9\n")
    with pytest.raises(UserError, match=r"Volume .*four.nii has shape \(5, 5, 5, 3\): a 3D volume is needed"):
        load("volumes", root=str(volume_dir), slices=4)
    (volume_dir / "four.nii").unlink()
    with pytest.raises(UserError, match=r"rows without a volume file .*\['four'\]"):
        load("volumes", root=str(volume_dir), slices=4)
    text = (volume_dir / "labels.csv").read_text().replace("four.nii,ad,S9\n", "")
    (volume_dir / "labels.csv").write_text(text)
    with pytest.raises(UserError, match="fewer than slices = 99"):
        load("volumes", root=str(volume_dir), slices=99)


def test_external_test_set_and_class_mismatch(volume_dir, tmp_path, tiny_npz):
    ds = load("volumes", root=str(volume_dir), slices=3)
    import shutil

    other = tmp_path / "hospital_b"
    shutil.copytree(volume_dir, other)
    for f in other.iterdir():  # another hospital: different scans of the same classes
        if f.suffix in (".nii", ".gz", ".img"):
            img = nib.load(str(f))
            nib.save(type(img)(np.asarray(img.get_fdata(), np.float32)[::-1] * 0.5 + 7, np.eye(4)), str(f))
    ext = lambda table: load(table["name"], **{k: v for k, v in table.items() if k != "name"})  # noqa: E731
    protocol = SplitProtocol.from_options({"split": "ratio", "ratios": [3, 1, 0], "test_on": {"name": "volumes", "root": str(other), "slices": 3}}, "t")
    split, report = apply_protocol(ds, protocol, ext)
    assert report.clean
    assert all(g.startswith("external:") for g in split.groups[split.split == "test"])
    assert len(split.labels[split.split == "test"]) == 8 * 3
    assert set(split.split[:len(ds.labels)]) <= {"train", "val", "test"}
    bad = SplitProtocol.from_options({"test_on": {"name": "medmnist_npz", "path": str(tiny_npz)}}, "t")
    with pytest.raises(UserError, match="its classes .* differ from"):
        apply_protocol(ds, bad, ext)


OASIS = SHARED / "data" / "oasis1-slices"


@pytest.mark.skipif(not OASIS.is_dir(), reason="../shared/data not present")
def test_an_external_view_of_the_held_out_subjects_is_the_test_set():
    """Paper 004's external test, made from a held-out source: train on axial slices, test on the coronal
    slices of exactly the subjects held out of training and validation (OASIS-1: one slice per view)."""
    axial = load("oasis1", root=str(OASIS), view="axial")
    ext = lambda table: load(table["name"], **{k: v for k, v in table.items() if k != "name"})  # noqa: E731
    options = {"split": "ratio", "ratios": [5, 2, 3], "test_on": {"name": "oasis1", "root": str(OASIS), "view": "coronal",
                                                                    "subjects": "held_out"}}
    split, report = apply_protocol(axial, SplitProtocol.from_options(options, "t"), ext)
    plain, _ = apply_protocol(axial, SplitProtocol.from_options({"split": "ratio", "ratios": [5, 2, 3]}, "t"))
    assert report.clean and not report.subjects
    test = split.split == "test"
    held_out = set(plain.groups[plain.split == "test"].tolist())
    assert sorted(split.groups[test].tolist()) == sorted(held_out)  # each held-out subject once, nobody else
    assert not held_out & set(split.groups[~test].tolist())
    assert np.array_equal(split.groups[~test], plain.groups[plain.split != "test"])  # training and validation as without it
    coronal = load("oasis1", root=str(OASIS), view="coronal")
    by_subject = {g: i for i, g in enumerate(coronal.groups.tolist())}
    for i in np.flatnonzero(test)[:10]:  # the test images are the coronal slices of those subjects
        assert np.array_equal(np.asarray(split.images[i]), np.asarray(coronal.images[by_subject[split.groups[i]]]))
        assert split.labels[i] == coronal.labels[by_subject[split.groups[i]]]
    assert "held-out subjects" in split.source
    # the same people's ids are required: a dataset of other people is refused, naming what to do
    brain = load("brain_tumor_mri", root=str(SHARED / "data" / "brain-tumor-mri"))
    bad = {"test_on": {"name": "oasis1", "root": str(OASIS), "view": "coronal", "subjects": "held_out"}}
    with pytest.raises(UserError, match='none of its images belongs to the .* subjects held out'):
        apply_protocol(dataclasses.replace(brain, classes=axial.classes), SplitProtocol.from_options(bad, "t"), ext)
    with pytest.raises(UserError, match="test_on.subjects: must be 'other'"):
        SplitProtocol.from_options({"test_on": {"name": "oasis1", "subjects": "same"}}, "t")


def test_external_test_with_the_same_images_is_caught(tiny_npz):
    ds = load("medmnist_npz", path=str(tiny_npz))
    ext = lambda table: load("medmnist_npz", path=table["path"])  # noqa: E731
    _, report = apply_protocol(ds, SplitProtocol.from_options({"test_on": {"name": "medmnist_npz", "path": str(tiny_npz)}}, "t"), ext)
    assert len(report.duplicates) >= 12  # every external test image is also in train/val


def test_augment_before_split_is_flagged(tiny_npz):
    ds = load("medmnist_npz", path=str(tiny_npz))
    split, report = apply_protocol(ds, SplitProtocol.from_options({"augment_before_split": 2}, "t"), augment=augment_array)
    assert len(split.labels) == 3 * len(ds.labels) and split.split_source == "made"
    assert report.subjects and any("before splitting" in p for p in report.protocol)


def test_augmentation_changes_images_but_not_size():
    rng = np.random.default_rng(0)
    image = np.tile(np.arange(64, dtype=np.uint8), (48, 1))
    out = augment_array(image, rng)
    assert out.shape == image.shape and not np.array_equal(out, image)
    batch = resize_images([image, image], 32)
    aug = augment_batch(batch, torch.Generator().manual_seed(0))
    assert aug.shape == batch.shape and aug.dtype == torch.uint8 and not torch.equal(aug, batch)
    again = augment_batch(batch, torch.Generator().manual_seed(0))
    assert torch.equal(aug, again)  # seeded


def test_offline_copies_only_for_the_training_split(tiny_dataset):
    plain = DataCache().get(tiny_dataset, 32)
    copied = DataCache().get(tiny_dataset, 32, copies=3, seed=1)
    assert len(copied["train"].labels) == 4 * len(plain["train"].labels)
    assert torch.equal(copied["train"].images[: len(plain["train"].labels)], plain["train"].images)
    for s in ("val", "test"):
        assert torch.equal(copied[s].images, plain[s].images)


def test_pad_keeps_aspect_ratio():
    wide = np.full((10, 40), 255, dtype=np.uint8)
    padded = resize_images([wide], 40, "pad")[0]
    assert padded[:, :10].max() == 0 and padded[:, 18:22].min() == 255  # black bars above and below
    stretched = resize_images([wide], 40, "stretch")[0]
    assert stretched.min() == 255


def test_balanced_loss_and_sampler_run(tiny_dataset):
    from freezebench.backbone import WeightsRequest
    from freezebench.engine.trial import TrialConfig, run_trial

    for balance in ("loss", "sampler"):
        cfg = TrialConfig(strategy="linear_probe", lr=0.01, epochs=1, batch_size=8, image_size=32, balance=balance, augment="online")
        result = run_trial(cfg, tiny_dataset, plugins.backbones().get("mobilenetv2_100"), WeightsRequest(False),
                           plugins.strategies().get("linear_probe"))
        assert result.outcome.best_epoch == 1


def test_suite_skips_missing_data_blocks_leaks_and_flags_allowed(tmp_path, tiny_npz, cli):
    config = write_suite(tmp_path / "b.toml", tiny_npz, strategy='"linear_probe"', n_trials=1,
                         extra=f'data_root = "{tmp_path / "nodata"}"\n')
    text = config.read_text().replace(
        'datasets = [{ name = "medmnist_npz"',
        'datasets = ["brain_tumor_mri", { name = "medmnist_npz", augment_before_split = 1')
    config.write_text(text)
    results = tmp_path / "results"
    code, _, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    err = " ".join(err.split())
    assert code == 2 and "leak audit of 'tinybreast'" in err and "--allow-leaks" in err and not results.exists()
    code, out, _ = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results), "--allow-leaks")
    out = " ".join(out.split())
    assert code == 0
    assert "Skipping dataset brain_tumor_mri: folder" in out and "nodata/brain-tumor-mri not found" in out
    assert "Leak audit tinybreast" in out and "allowed, and flagged on every run" in out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinybreast")
    run = client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'trial'")[0]
    assert run.data.tags["freezebench.leaks_allowed"] == "true"
    assert "before splitting" in run.data.tags["freezebench.leaks"]


def _subjects_dataset(seed=0):
    """30 subjects of 1-3 distinct random images each, two classes, split by subject into train/val/test."""
    from freezebench.dataset import ImageDataset
    from freezebench.suite.protocols import ratio_split

    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, size=30)
    groups = np.repeat([f"s{i}" for i in range(30)], sizes)
    labels = np.repeat(np.arange(30) % 2, sizes)
    images = rng.integers(0, 256, size=(len(labels), 16, 16), dtype=np.uint8)
    split = ratio_split(labels, groups, (0.6, 0.2, 0.2), 0)
    return ImageDataset("subjects", ("a", "b"), images, labels, split, groups)


def test_a_resplit_draws_train_and_val_again_and_keeps_test_and_subjects_whole():
    from freezebench.suite.protocols import resplit

    ds = _subjects_dataset()
    one, again, other = resplit(ds, [0, 1]), resplit(ds, [0, 1]), resplit(ds, [0, 2])
    for r in (one, other):
        assert np.array_equal(r.split == "test", ds.split == "test")  # the same test images, in the same order
        assert set(np.unique(r.split[ds.split != "test"])) == {"train", "val"}
        for g in np.unique(ds.groups):  # a subject's images stay in one split
            assert len(set(r.split[ds.groups == g])) == 1
        for c in (0, 1):  # about as many validation images per class as before (whole subjects of 1-3 images)
            assert abs(int(((r.split == "val") & (ds.labels == c)).sum()) - int(((ds.split == "val") & (ds.labels == c)).sum())) <= 3
    assert np.array_equal(one.split, again.split)  # seeded
    assert not np.array_equal(one.split, ds.split) and not np.array_equal(one.split, other.split)
    assert one.split_hash() not in (ds.split_hash(), other.split_hash())
    image_level = resplit(ds, [0, 1], level="image")  # a leaky protocol's resplit draws images, not subjects
    assert any(len(set(image_level.split[ds.groups == g])) > 1 for g in np.unique(ds.groups))


def test_validation_folds_cut_the_training_subjects_into_disjoint_validation_sized_folds_and_keep_test_whole():
    """confirm.resplit = "folds": the folds, with the search's own validation set, cover train+val once."""
    from freezebench.suite.protocols import fold_resplit, validation_folds

    ds = _subjects_dataset()
    folds = validation_folds(ds, 0)
    n_train, n_val = int((ds.split == "train").sum()), int((ds.split == "val").sum())
    assert len(folds) == max(2, round(n_train / n_val))
    every = np.concatenate(folds)
    assert len(every) == len(set(every.tolist())) and set(every.tolist()) == set(np.flatnonzero(ds.split == "train").tolist())
    assert all(len(f) <= 2 * n_val for f in folds)
    assert all(np.array_equal(a, b) for a, b in zip(folds, validation_folds(ds, 0)))  # seeded
    for i, fold in enumerate(folds):
        r = fold_resplit(ds, folds, i)
        assert np.array_equal(r.split == "test", ds.split == "test")
        assert set(np.flatnonzero(r.split == "val").tolist()) == set(fold.tolist())
        assert np.array_equal(r.split == "train", (ds.split != "test") & (r.split != "val"))  # the search's val trains here
        assert set(ds.labels[fold].tolist()) == {0, 1}  # stratified: both classes in each fold
        for g in np.unique(ds.groups):
            assert len(set(r.split[ds.groups == g])) == 1
    assert np.array_equal(fold_resplit(ds, folds, len(folds)).split, fold_resplit(ds, folds, 0).split)  # more seeds: again


def test_validation_folds_leave_a_subject_that_is_also_in_validation_in_training():
    """An official split may put one subject's images (or near-duplicates) on both sides: such a group is never
    cut into a fold, so a fold's validation images never have a sibling in its training set."""
    from freezebench.suite.protocols import fold_resplit, validation_folds

    ds = _subjects_dataset()
    val_subject = ds.groups[np.flatnonzero(ds.split == "val")[0]]
    train_image = np.flatnonzero(ds.split == "train")[0]
    groups = np.array(ds.groups, dtype=object)
    groups[train_image] = val_subject  # one training image of a validation subject
    import dataclasses

    shared = dataclasses.replace(ds, groups=groups)
    folds = validation_folds(shared, 0)
    assert train_image not in set(np.concatenate(folds).tolist())
    for i in range(len(folds)):
        r = fold_resplit(shared, folds, i)
        for g in set(groups[r.split == "val"].tolist()):
            assert set(r.split[groups == g]) == {"val"}
