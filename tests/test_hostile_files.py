"""Hostile and mistaken data and weights files (issue "Reliability"): each is named with the fix, never
read where it should not be, and never shown as a numpy or torch traceback. Hostile folder names: the
stores stay where they were asked to be."""

from __future__ import annotations

import numpy as np
import pytest

from freezebench import plugins
from freezebench.errors import UserError


def _load(name: str, **options):
    return plugins.datasets().get(name).load(**options)


def _npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case,expected", [
    ("flattened", "train_images must be uint8 (N,H,W) or (N,H,W,3), got uint8 (8, 64) (flattened?"),
    ("fewer_labels", "val_labels holds 3 labels for 4 val_images: one label per image is needed"),
    ("object_array", "test_labels is an array of Python objects (pickled), which freezebench never loads"),
    ("text_file", "is not a .npz file (a .npz is a zip archive of arrays; this file starts with b'trai'"),
    ("float_labels", "train_labels must be class indices 0, 1, ... (integers), got float64"),
])
def test_npz_mistakes_are_named(tmp_path, case, expected):
    path = tmp_path / "data.npz"
    rng = np.random.default_rng(1)
    if case == "flattened":
        _npz(path, train_images=rng.integers(0, 255, (8, 64), dtype=np.uint8))
    elif case == "fewer_labels":
        _npz(path, val_labels=np.zeros((3, 1), np.int64))
    elif case == "object_array":
        _npz(path, test_labels=np.array([0, 1, "x", None], dtype=object))
    elif case == "text_file":
        path.write_text("train_images,train_labels\n1,2\n")
    elif case == "float_labels":
        _npz(path, train_labels=np.full((8, 1), 0.5))
    with pytest.raises(UserError) as exc:
        _load("medmnist_npz", path=str(path))
    assert expected in str(exc.value) and str(path) in str(exc.value)


def test_a_well_formed_npz_still_loads(tmp_path):
    ds = _load("medmnist_npz", path=str(_npz(tmp_path / "ok.npz")), classes=["a", "b"])
    assert len(ds.labels) == 16 and ds.classes == ("a", "b") and set(ds.split) == {"train", "val", "test"}


@pytest.fixture
def volume_dir(tmp_path):
    import nibabel as nib

    root = tmp_path / "vols"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = ["file,label"]
    for i in range(4):
        nib.save(nib.Nifti1Image(rng.random((12, 12, 10)).astype(np.float32), np.eye(4)), root / f"v{i}.nii.gz")
        rows.append(f"v{i}.nii.gz,{'AD' if i % 2 else 'CN'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("options,expected", [
    ({"slices": "many"}, "Dataset 'volumes': slices must be a whole number of slices per volume, 1 or more, not 'many'"),
    ({"slices": 2.5}, "slices must be a whole number"),
    ({"slices": 0}, "slices must be a whole number"),
    ({"axis": 5}, "Dataset 'volumes': axis must be 0, 1 or 2 (the volume axis to slice along), not 5"),
    ({"classes": ["CN", "MCI"]}, "labels ['AD'] are not among classes ['CN', 'MCI']"),
    ({"classes": "CN"}, "classes must be a list of two or more distinct label names, not 'CN'"),
])
def test_volume_option_mistakes_are_named(volume_dir, options, expected):
    with pytest.raises(UserError) as exc:
        _load("volumes", root=str(volume_dir), **options)
    assert expected in str(exc.value)


def test_volume_classes_set_the_label_order(volume_dir):
    ds = _load("volumes", root=str(volume_dir), slices=2, classes=["CN", "AD"])
    assert ds.classes == ("CN", "AD") and ds.labels.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]


def _images(folder, names):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((8, 8), i * 9, np.uint8)).save(folder / name)


@pytest.mark.parametrize("path_of", [lambda outside: "../outside/0.png", lambda outside: str(outside / "0.png"),
                                     lambda outside: "sub/../../outside/0.png"])
def test_csv_paths_never_leave_the_csv_folder(tmp_path, path_of):
    _images(tmp_path / "outside", ["0.png"])
    _images(tmp_path / "data", [f"{i}.png" for i in range(12)])
    rows = [f"{i}.png,{'a' if i % 2 else 'b'}" for i in range(12)] + [f"{path_of(tmp_path / 'outside')},a"]
    manifest = tmp_path / "data" / "m.csv"
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(UserError) as exc:
        _load("csv_manifest", path=str(manifest))
    assert f"rows name paths outside {tmp_path / 'data'}" in str(exc.value) and "set this dataset's root" in str(exc.value)
    # the documented way to read images from elsewhere: a root that holds them all, paths relative to it
    manifest.write_text("path,label\n" + "\n".join(f"data/{r}" for r in rows[:-1]) + "\noutside/0.png,a\n")
    ds = _load("csv_manifest", path=str(manifest), root=str(tmp_path))
    assert len(ds.labels) == 13


def test_csv_paths_under_a_root_load(tmp_path):
    _images(tmp_path / "imgs" / "x", [f"{i}.png" for i in range(12)])
    manifest = tmp_path / "lists" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label\n" + "".join(f"x/{i}.png,{'a' if i % 2 else 'b'}\n" for i in range(12)))
    ds = _load("csv_manifest", path=str(manifest), root=str(tmp_path / "imgs"))
    assert len(ds.labels) == 12 and ds.classes == ("a", "b")


# Checkpoints saved by other libraries: other key names, and the source's own ImageNet classifier still in.

def _renamed_checkpoint(tmp_path, tail=None):
    """The shipped MobileNetV2 ImageNet weights (with their 1000-class classifier, last), under the key
    names another library would use; ``tail`` replaces the classifier with other tensors."""
    import torch

    from freezebench.weights import read_state_dict
    from freezebench_plugins.timm_backbones import SHIPPED

    full = read_state_dict(SHIPPED["mobilenetv2_100"][0])
    timm = plugins.backbones().get("mobilenetv2_100").build(1000, __import__("freezebench.backbone").backbone.WeightsRequest())
    order = list(timm.model.state_dict())  # the module order (safetensors files come back sorted by name)
    body = [(k, full[k]) for k in order if not k.startswith("classifier.")]
    head = tail if tail is not None else [("classifier.weight", full["classifier.weight"]), ("classifier.bias", full["classifier.bias"])]
    state = {f"_blocks.{i}._t": v for i, (_, v) in enumerate(body)}
    state.update({f"_fc.{k.split('.')[-1]}": v for k, v in head})
    path = tmp_path / "other_library.pth"
    torch.save(state, path)
    return path, body


def test_a_checkpoint_with_its_own_classifier_loads_and_says_what_it_dropped(tmp_path):
    import torch

    from freezebench.backbone import WeightsRequest

    path, body = _renamed_checkpoint(tmp_path)
    b = plugins.backbones().get("mobilenetv2_100").build(3, WeightsRequest(True, str(path)))
    state = b.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in body)  # every tensor but the classifier, by order
    assert b.model.get_classifier().out_features == 3
    assert b.weights_note == "dropped the source's classifier: _fc.weight [1000, 1280], _fc.bias [1000]"


def test_extra_tensors_that_are_no_classifier_are_still_refused(tmp_path):
    import torch

    from freezebench.backbone import WeightsRequest

    path, _ = _renamed_checkpoint(tmp_path, tail=[("conv.weight", torch.zeros(1000, 1280, 3, 3))])
    with pytest.raises(UserError, match="the weights are for another architecture"):
        plugins.backbones().get("mobilenetv2_100").build(3, WeightsRequest(True, str(path)))


def test_the_dropped_classifier_is_said_before_the_run_and_recorded(cli, tmp_path, tiny_npz):
    from .conftest import write_suite

    path, _ = _renamed_checkpoint(tmp_path)
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='"linear_probe"', n_trials=1)
    config.write_text(config.read_text().replace('backbones = ["mobilenetv2_100"]',
                                                 f'backbones = [{{ name = "mobilenetv2_100", weights = "{path}" }}]'))
    code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(tmp_path / "r"))
    assert code == 0, err
    assert "dropped the source's classifier: _fc.weight [1000, 1280], _fc.bias [1000]" in " ".join(out.split())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'r' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tinybreast").experiment_id], "tags.`freezebench.role` = 'trial'")
    assert [r.data.params["weights_source"] for r in runs] == [
        f"file:{path} (dropped the source's classifier: _fc.weight [1000, 1280], _fc.bias [1000])"]


# Characters that mean something in a database URL: SQLAlchemy decodes %XX in the file name and ends it at
# "?" or "#"; Optuna fills {...} in a storage URL as a str.format template. In a folder name they are text.
URL_HOSTILE = ["100%20", "a?b#c", "{x}", "{", "sp ace", "\u00fcn\u00ef"]


@pytest.mark.parametrize("name", URL_HOSTILE)
def test_a_sqlite_url_names_its_own_file_and_optuna_opens_it_there(tmp_path, name):
    from freezebench.suite.stores import sqlite_file, sqlite_url
    from freezebench.suite.studies import storage

    path = tmp_path / name / "optuna.db"
    path.parent.mkdir()
    assert sqlite_file(sqlite_url(path)) == path
    storage(sqlite_url(path))
    assert path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [name]
    typed = path.with_name("typed.db")  # a URL a user typed, path not encoded: braces are still literal
    if not any(c in name for c in "%?#"):
        storage(f"sqlite:///{typed}")
        assert typed.is_file()


def test_a_results_dir_with_url_characters_in_its_name_keeps_every_store_and_artifact_in_it(cli, tmp_path, tiny_npz):
    import json
    import shutil

    from .conftest import write_suite

    base = tmp_path / "100%20 {x} a?b#c"
    base.mkdir()
    npz = shutil.copy(tiny_npz, base / "tiny.npz")
    config = write_suite(base / "bench.toml", npz, strategy='"linear_probe"', n_trials=1)
    results = base / "results"
    code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir()] == [base.name]  # nothing at a decoded or cut-off name beside it
    assert _hint(out, "Browse every run: ") == ["freezebench", "ui", "--results-dir", str(results)]  # pasted, it works
    assert {"optuna.db", "mlflow.db", "mlartifacts"} <= {p.name for p in results.iterdir()}
    assert not list(results.glob("*.creating"))
    code, out, err = cli("leaderboard", "--dataset", "tinybreast", "--json", "--results-dir", str(results))
    assert code == 0, err
    assert [r["strategy"] for r in json.loads(out)] == ["linear_probe"]
    from freezebench.results.layout import TRIAL_CONFIG

    logged = {p.name for p in (results / "mlartifacts").rglob("*") if p.is_file()}
    assert TRIAL_CONFIG in logged, sorted(logged)
    code, out, err = cli("export", "--dataset", "tinybreast", "--results-dir", str(results), "--out", str(base / "model"))
    assert code == 0, err
    assert _hint(out, "Use it: ") == ["freezebench", "predict", "--model", str(base / "model"), "IMAGES..."]
    code, _, err = cli("report", "--suite", "my suite", "--results-dir", str(results), "--out", str(base / "report"))
    assert code == 2 and "(freezebench run --suite 'my suite')" in " ".join(err.split())


def _hint(out: str, prefix: str) -> list[str]:
    """The command a printed hint gives, as the shell would split it."""
    import shlex

    (line,) = [line for line in out.splitlines() if line.startswith(prefix)]
    return shlex.split(line.removeprefix(prefix))


def test_a_results_dir_moved_or_copied_reads_and_writes_its_own_artifacts(cli, tmp_path, tiny_npz):
    """MLflow records artifact locations as absolute URIs: a moved results dir read none of its test predictions
    (recommend said "no test predictions recorded", export failed with a traceback), and a copy read, and a
    resumed run wrote, the original's. The first command on the moved or copied folder points them into it."""
    import json
    import shutil

    from .conftest import write_suite

    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='"linear_probe"', n_trials=2)
    first = tmp_path / "first"
    assert cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(first))[0] == 0
    code, out, _ = cli("recommend", "--json", "--results-dir", str(first))
    (before,) = json.loads(out)
    assert code == 0 and before["test"]["auc"]["low"] < before["test"]["auc"]["high"]

    moved = tmp_path / "moved"
    first.rename(moved)
    code, out, err = cli("recommend", "--json", "--results-dir", str(moved))
    assert code == 0 and json.loads(out) == [before]  # the same test intervals, read from the moved folder
    assert f"moved or copied from {first}" in " ".join(err.split())
    code, out, err = cli("recommend", "--json", "--results-dir", str(moved))
    assert code == 0 and "moved" not in err  # once
    code, _, err = cli("export", "--results-dir", str(moved), "--out", str(tmp_path / "model"))
    assert code == 0, err

    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    originals = sorted(p.relative_to(moved) for p in (moved / "mlartifacts").rglob("*"))
    code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(copy), "--n-trials", "3")
    assert code == 0, err
    assert f"moved or copied from {moved}" in " ".join(out.split())
    assert sorted(p.relative_to(moved) for p in (moved / "mlartifacts").rglob("*")) == originals  # the original untouched
    assert len(list((copy / "mlartifacts").rglob("*"))) > len(originals)  # the third trial logged into the copy
    code, out, _ = cli("leaderboard", "--json", "--results-dir", str(copy))
    rows = json.loads(out)
    assert code == 0 and len(rows) == 3 and all(r["test_auc_ci"] for r in rows) and all(r["vs_first"] for r in rows[1:])

    import sqlite3  # a store from before 2026-12-07 recorded plain paths, not file:// URIs: moved likewise
    legacy = tmp_path / "legacy"
    shutil.copytree(moved, legacy)
    with sqlite3.connect(legacy / "mlflow.db") as con:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
            con.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)",
                        ((moved / "mlartifacts").as_uri(), str(moved / "mlartifacts")))
    code, out, err = cli("recommend", "--json", "--results-dir", str(legacy))
    assert code == 0 and json.loads(out) == [before] and f"moved or copied from {moved}" in " ".join(err.split())
