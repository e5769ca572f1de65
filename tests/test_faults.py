"""Faults and hostile input found by an outside probe (issue "Reliability"): each case gets a clear
message, a non-zero exit, and nothing half-written."""

from __future__ import annotations

import pytest

from .test_bad_input import _valid, run_bad  # noqa: F401  (fixture)


def test_error_text_is_never_read_as_markup(run_bad, tiny_npz, tmp_path):
    weights = tmp_path / "a[/x]" / "[bold]w.safetensors"
    text = _valid(tiny_npz).replace('backbones = ["mobilenetv2_100"]',
                                     f'backbones = [{{ name = "mobilenetv2_100", weights = "{weights}" }}]')
    err = run_bad(text)
    assert f"weights file for 'mobilenetv2_100' not found: {weights}" in err


def test_install_hints_keep_their_brackets(cli, monkeypatch):
    from freezebench.cli import run as run_module
    from freezebench.errors import UserError

    def refuse(*args, **kwargs):
        raise UserError('No database driver for the Optuna storage: pip install "freezebench[postgres]".')

    monkeypatch.setattr(run_module, "prepare", refuse)
    code, _, err = cli("run", "--suite", "quick")
    assert code == 2 and 'pip install "freezebench[postgres]"' in err


def test_descriptions_with_brackets_show_as_written(cli, tmp_path, tiny_npz):
    from .conftest import write_suite

    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='"linear_probe"', n_trials=1,
                         extra='description = "[bold]MRI[/bold] [/x] cohort"')
    code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(tmp_path / "r"))
    assert code == 0, err
    assert "Suite tiny ([bold]MRI[/bold] [/x] cohort)" in " ".join(out.split())


@pytest.mark.parametrize("where,value", [("alias", "../../evil"), ("alias", ".hidden"), ("alias", "a/b"),
                                         ("suite", "../../escaped"), ("suite", "a/b")])
def test_names_that_would_become_paths_are_refused(run_bad, tiny_npz, where, value):
    text = _valid(tiny_npz)
    if where == "alias":
        text = text.replace('path = "', f'alias = "{value}", path = "')
        err = run_bad(text)
        assert "suites.tiny.datasets[0].alias: an alias must start with a letter or digit" in err
    else:
        text = text.replace("[suites.tiny]", f'[suites."{value}"]').replace("[suites.tiny.params]", f'[suites."{value}".params]')
        err = run_bad(text, suite=value)
        assert f"suites.{value}: a suite name must start with a letter or digit" in err


def test_stored_names_never_leave_their_folder(tmp_path):
    """Defence in depth: names are made safe path components wherever they become one."""
    from freezebench.results.layout import path_component
    from freezebench.results.tracking import Tracker

    for name in ("../../evil", "..", ".", "a/b", "c\\d", "", "ok-name_1.2"):
        part = path_component(name)
        assert "/" not in part and "\\" not in part and part not in (".", "..", "") and not part.startswith(".")
    assert path_component("ok-name_1.2") == "ok-name_1.2" and path_component("a/b") != path_component("a_b")
    from pathlib import Path

    root = tmp_path / "mlartifacts"
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", str(root))
    exp = tracker.client.get_experiment(tracker.experiment_id("../../evil"))
    location = Path(exp.artifact_location.removeprefix("file://"))
    assert location.parent == root and ".." not in location.parts


@pytest.mark.parametrize("old,new,expected", [
    ("k = 2", "k = { low = 6, high = 2 }", "suites.tiny.params.k: low (6) is greater than high (2)"),
    ("k = 2", "k = { low = -1, high = 2 }", "suites.tiny.params.k: the range {low = -1, high = 2} is empty for backbone 'mobilenetv2_100'"),
    ("lr = 0.01", "lr = { low = 0.001, high = 0.1, step = 0 }", "suites.tiny.params.lr.step: must be a number > 0, got 0"),
    ("lr = 0.01", "lr = { low = 0.001, high = 0.1, log = true, step = 0.01 }", "suites.tiny.params.lr.step: a log range takes no step"),
    ("[suites.tiny.params]", 'params = "fast"\n[suites.tiny.other]', "suites.tiny.params: must be a table of parameters"),
])
def test_ranges_and_tables_are_checked_before_anything_runs(run_bad, tiny_npz, old, new, expected):
    text = _valid(tiny_npz).replace(old, new)
    if new.startswith("params ="):  # params given as a string instead of a table
        text = _valid(tiny_npz).split("[suites.tiny.params]")[0].replace("n_trials = 1", 'n_trials = 1\nparams = "fast"')
    assert expected in run_bad(text)


def test_more_folds_than_subjects_is_named(run_bad, tiny_npz):
    text = _valid(tiny_npz).replace('path = "', 'split = "kfold", folds = 40, path = "')
    err = run_bad(text)
    assert "suites.tiny.datasets[0]" in err and "folds = 40" in err


def _weights_suite(tiny_npz, weights: str, sha256: str | None = None) -> str:
    extra = f', sha256 = "{sha256}"' if sha256 else ""
    return _valid(tiny_npz).replace('backbones = ["mobilenetv2_100"]',
                                    f'backbones = [{{ name = "mobilenetv2_100", weights = "{weights}"{extra} }}]')


@pytest.fixture
def weight_files(tmp_path):
    """Bad weights of every kind the probe tried, each a real file."""
    import shutil

    import torch

    from freezebench import plugins
    from freezebench.backbone import WeightsRequest
    from freezebench_plugins.timm_backbones import SHIPPED

    good, sha = SHIPPED["mobilenetv2_100"]
    files = {"empty": tmp_path / "empty.safetensors", "truncated": tmp_path / "truncated.pth", "other": tmp_path / "resnet.pth",
             "good": tmp_path / "good.safetensors"}
    files["empty"].write_bytes(b"")
    shutil.copy(good, files["good"])
    torch.save(plugins.backbones().get("resnet10t").build(2, WeightsRequest(False)).model.state_dict(), files["other"])
    files["truncated"].write_bytes(files["other"].read_bytes()[:5000])
    return files, sha


@pytest.mark.parametrize("case,expected", [
    ("empty", "is empty (0 bytes)"),
    ("truncated", "Cannot read weights file"),
    ("other", "the weights are for another architecture"),
    ("wrong_sha", "has sha256"),
    ("malformed_sha", "sha256: must be 64 hexadecimal digits"),
    ("unreachable", "Could not download weights from http://127.0.0.1:9/"),
])
def test_bad_weights_are_found_before_anything_is_written(run_bad, tiny_npz, weight_files, case, expected):
    files, sha = weight_files
    if case == "wrong_sha":
        text = _weights_suite(tiny_npz, files["good"], "0" * 64)
    elif case == "malformed_sha":
        text = _weights_suite(tiny_npz, files["good"], "abc123")
    elif case == "unreachable":
        text = _weights_suite(tiny_npz, "http://127.0.0.1:9/w.safetensors")
    else:
        text = _weights_suite(tiny_npz, files[case])
    err = run_bad(text)  # exit 2, no traceback, no results folder
    assert expected in err and "backbones" in err


def test_two_datasets_with_one_alias_are_refused(run_bad, tiny_npz):
    text = _valid(tiny_npz)
    one = f'{{ name = "medmnist_npz", path = "{tiny_npz}", alias = "same" }}'
    text = text.replace(text[text.index("datasets = ["):text.index("\n", text.index("datasets = ["))], f"datasets = [{one}, {one}]")
    err = run_bad(text)
    assert "suites.tiny.datasets[1]: has the same name or alias (it names the study and the MLflow experiment) as " \
           "suites.tiny.datasets[0]: 'same'; give each an alias." in err
    twice = _valid(tiny_npz).replace('backbones = ["mobilenetv2_100"]', 'backbones = ["mobilenetv2_100", "mobilenetv2_100"]')
    assert "suites.tiny.backbones[1]: has the same backbone (it names the study) as suites.tiny.backbones[0]" in run_bad(twice)


@pytest.mark.parametrize("value", ["abc", "0", "-5"])
def test_a_bad_heartbeat_grace_is_named_before_anything_is_written(run_bad, tiny_npz, monkeypatch, value):
    monkeypatch.setenv("FREEZEBENCH_HEARTBEAT_GRACE", value)
    assert f"FREEZEBENCH_HEARTBEAT_GRACE={value!r}: give whole seconds, at least 2" in run_bad(_valid(tiny_npz))


def _bomb_png(path, side: int = 20000) -> None:
    """A tiny PNG whose header declares ``side`` x ``side`` pixels (PIL refuses to open it: a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_named_and_skipped_under_the_policy(tmp_path):
    import warnings

    import numpy as np
    from PIL import Image

    from freezebench.errors import UserError
    from freezebench.imagefiles import decode_files

    bomb, fine = tmp_path / "bomb.png", tmp_path / "fine.png"
    _bomb_png(bomb)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(fine)
    with pytest.raises(UserError, match="Cannot read image .*bomb.png: DecompressionBombError"):
        decode_files([fine, bomb], cache=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, kept = decode_files([fine, bomb], on_error="skip", cache=False)
    assert kept == [0] and len(images) == 1 and any("bomb.png" in str(w.message) for w in caught)


def test_a_dataset_plugin_error_names_the_suite_key(run_bad, tiny_npz, tmp_path):
    import numpy as np
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    text = _valid(tiny_npz).replace(f'{{ name = "medmnist_npz", path = "{tiny_npz}" }}',
                                    f'{{ name = "image_folder", root = "{tmp_path / "imgs"}", on_error = "ignore" }}')
    err = run_bad(text)
    assert "suites.tiny.datasets[0] (image_folder): on_error must be one of" in err and "'ignore'" in err


@pytest.mark.parametrize("option,value,expected", [
    ("--storage", "notaurl", "--storage 'notaurl' is no Optuna storage freezebench can use"),
    ("--storage", "sqlite:///{tmp}/missing/dir/optuna.db", "the folder {tmp}/missing/dir does not exist"),
    ("--tracking-uri", "foo://bar", "--tracking-uri 'foo://bar' is no MLflow tracking URI freezebench can use"),
])
def test_impossible_stores_are_named_before_anything_is_written(cli, tmp_path, tiny_npz, option, value, expected):
    config = tmp_path / "bench.toml"
    config.write_text(_valid(tiny_npz), encoding="utf-8")
    results = tmp_path / "results"
    code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results),
                         option, value.format(tmp=tmp_path))
    assert code == 2 and "Traceback" not in err
    assert expected.format(tmp=tmp_path) in " ".join(err.split())
    assert not results.exists() and not (tmp_path / "missing").exists()


@pytest.mark.parametrize("store,content,expected", [
    ("mlflow.db", b"this is not a database at all" * 10, "mlflow.db is not an SQLite database"),
    ("mlflow.db", b"", "mlflow.db is empty (0 bytes)"),
    ("optuna.db", b"\x00garbage" * 50, "optuna.db is not an SQLite database"),
    ("mlflow.db", b"SQLite format 3\x00" + b"\x00" * 84, "Cannot open the MLflow store"),  # a header, then nothing: damaged
])
def test_damaged_stores_are_named_and_left_as_they_are(cli, tmp_path, tiny_npz, store, content, expected):
    config = tmp_path / "bench.toml"
    config.write_text(_valid(tiny_npz), encoding="utf-8")
    results = tmp_path / "results"
    results.mkdir()
    (results / store).write_bytes(content)
    code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 2 and "Traceback" not in err and expected in " ".join(err.split())
    assert (results / store).read_bytes() == content  # never rewritten
    assert not (results / "mlartifacts").exists()


@pytest.mark.parametrize("command", [("leaderboard", "--dataset", "x"), ("report", "--suite", "x"), ("ui",)])
def test_reading_commands_name_a_damaged_store(cli, tmp_path, command):
    results = tmp_path / "results"
    results.mkdir()
    (results / "mlflow.db").write_bytes(b"garbage" * 20)
    code, _, err = cli(*command, "--results-dir", str(results))
    assert code == 2 and "mlflow.db is not an SQLite database" in " ".join(err.split())


@pytest.mark.parametrize("case,expected", [
    ("latin1", "not UTF-8 text (byte 0xe9"),
    ("header_only", "has a header but no rows"),
    ("no_header", "needs a header with columns path and label"),
    ("partial_split", "split is filled on 2 of 24 rows"),
    ("typo_label", "label(s) ['benign '] have only [1] rows"),
])
def test_csv_manifest_mistakes_are_named(tmp_path, case, expected):
    import numpy as np
    from PIL import Image

    from freezebench import plugins
    from freezebench.errors import UserError

    rows = []
    for i in range(24):
        Image.fromarray(np.full((8, 8), i * 9, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append([f"{i}.png", "benign" if i % 2 else "malignant", ""])
    if case == "partial_split":
        rows[0][2] = rows[1][2] = "train"
    if case == "typo_label":
        rows[5][1] = "benign "
    text = "path,label,split\n" + "".join(",".join(r) + "\n" for r in rows)
    if case == "header_only":
        text = "path,label,split\n"
    if case == "no_header":
        text = text.split("\n", 1)[1]
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(text.encode("utf-8") if case != "latin1" else text.replace("0.png", "é0.png").encode("latin-1"))
    with pytest.raises(UserError) as exc:
        plugins.datasets().get("csv_manifest").load(path=str(manifest))
    assert expected in str(exc.value) and str(manifest) in str(exc.value)
