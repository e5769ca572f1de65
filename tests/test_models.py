"""The trained model a researcher can use (issue "The answer"): each study keeps its best trials'
models, `freezebench export` writes the recommended one as a folder (safetensors + manifest + card),
and `freezebench predict` gives back exactly the probabilities the trial logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from .conftest import write_suite


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_npz):
    tmp = tmp_path_factory.mktemp("models")
    config = write_suite(tmp / "bench.toml", tiny_npz, n_trials=5)
    results = tmp / "results"
    proc = subprocess.run([sys.executable, "-m", "freezebench", "run", "--suite", "tiny", "--config", str(config),
                           "--results-dir", str(results)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "160"})
    assert proc.returncode == 0, proc.stderr
    return tmp, results


def _client(results):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{results / 'mlflow.db'}")


def _trials(results):
    client = _client(results)
    exp = client.get_experiment_by_name("tinybreast")
    runs = client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'trial' and tags.`freezebench.state` = 'complete'")
    return client, sorted(runs, key=lambda r: r.info.end_time)


def test_the_study_best_trials_keep_their_models_and_only_they(study):
    _, results = study
    client, runs = _trials(results)
    assert len(runs) >= 3
    best_before = -np.inf
    for run in runs:  # in the order they finished
        value = run.data.metrics["best_val_f1"]
        kept = run.data.tags.get("freezebench.model") == "kept"
        assert kept == (value >= best_before), (run.info.run_name, value, best_before)
        files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
        assert files == ({"model/model.safetensors", "model/freezebench-model.json"} if kept else set())
        best_before = max(best_before, value)


def _test_images(tiny_npz):
    with np.load(tiny_npz) as npz:
        return list(npz["test_images"]), npz["test_labels"].ravel()


def test_export_writes_the_recommended_model_and_it_predicts_what_the_trial_logged(study, cli, tiny_npz, monkeypatch):
    from freezebench.engine.saved import load_model
    from freezebench.results.tracking import load_arrays

    tmp, results = study
    out = tmp / "exported"
    code, text, err = cli("export", "--dataset", "tinybreast", "--results-dir", str(results), "--out", str(out))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["MODEL.md", "freezebench-model.json", "model.safetensors"]
    manifest = json.loads((out / "freezebench-model.json").read_text())
    client, runs = _trials(results)
    best = max(runs, key=lambda r: (r.data.metrics["best_val_f1"], -r.info.start_time))  # the leaderboard's first row
    assert manifest["run_id"] == best.info.run_id and manifest["classes"] == ["0", "1"]
    code, _, err = cli("export", "--results-dir", str(results), "--out", str(tmp / "exported-default"))
    assert code == 0, err  # the store's only dataset, when none is named
    assert json.loads((tmp / "exported-default" / "freezebench-model.json").read_text())["run_id"] == best.info.run_id
    card = (out / "MODEL.md").read_text()
    assert "Recommended for tinybreast" in card and "95% CI" in card and "freezebench predict --model" in card

    images, labels = _test_images(tiny_npz)
    logged = load_arrays(client, best.info.run_id, "test_predictions.npz")
    saved = load_model(out)
    probs = saved.predict(images)
    assert np.array_equal(logged["labels"], labels)
    np.testing.assert_allclose(probs, logged["probs"], atol=2e-5)  # the round trip: the trial's own test predictions

    folder = tmp / "pngs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:02d}.png")  # lossless: the same pixels
    code, text, err = cli("predict", "--model", str(out), str(folder), "--json", "--out", str(tmp / "p.csv"))
    assert code == 0, err
    rows = json.loads(text)
    assert [r["file"] for r in rows] == [str(folder / f"{i:02d}.png") for i in range(len(images))]
    np.testing.assert_allclose([[r[f"p_{c}"] for c in saved.classes] for r in rows], logged["probs"], atol=2e-5)
    assert [r["predicted"] for r in rows] == [saved.classes[i] for i in logged["probs"].argmax(1)]
    assert (tmp / "p.csv").read_text().splitlines()[0] == "file,predicted," + ",".join(f"p_{c}" for c in saved.classes)

    # a CSV of paths (relative to it, any order), predicted in batches smaller than the list: the same probabilities
    monkeypatch.setattr("freezebench.cli.models.PREDICT_BATCH", 5)
    order = list(range(len(images)))[::-1]
    (folder / "list.csv").write_text("path,note\n" + "".join(f"{i:02d}.png,x\n" for i in order))
    code, text, err = cli("predict", "--model", str(out), str(folder / "list.csv"), "--json")
    assert code == 0, err
    rows = json.loads(text)
    assert [r["file"] for r in rows] == [str(folder / f"{i:02d}.png") for i in order]
    np.testing.assert_allclose([[r[f"p_{c}"] for c in saved.classes] for r in rows], logged["probs"][order], atol=2e-5)


def test_export_registers_a_model_version(study, cli):
    tmp, results = study
    code, _, err = cli("export", "--dataset", "tinybreast", "--results-dir", str(results), "--out", str(tmp / "reg"),
                       "--register", "tiny-breast")
    assert code == 0, err
    manifest = json.loads((tmp / "reg" / "freezebench-model.json").read_text())
    (version,) = _client(results).search_model_versions("name = 'tiny-breast'")
    assert version.run_id == manifest["run_id"] and version.source.endswith("/model")
    assert version.tags["freezebench.dataset"] == "tinybreast"


def test_export_and_predict_mistakes_are_named(study, cli, tmp_path):
    _, results = study
    client, runs = _trials(results)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("keep me")
    code, _, err = cli("export", "--dataset", "tinybreast", "--results-dir", str(results), "--out", str(full))
    assert code == 2 and "exists and is not empty" in err and (full / "x").read_text() == "keep me"
    without = [r for r in runs if r.data.tags.get("freezebench.model") != "kept"]
    if without:
        code, _, err = cli("export", "--dataset", "tinybreast", "--results-dir", str(results), "--out", str(tmp_path / "n"),
                           "--run-id", without[0].info.run_id)
        assert code == 2 and "did not keep its trained model" in " ".join(err.split()) and not (tmp_path / "n").exists()
    code, _, err = cli("export", "--dataset", "nosuch", "--results-dir", str(results), "--out", str(tmp_path / "m"))
    assert code == 2 and "No results for dataset 'nosuch'" in err
    code, _, err = cli("export", "--suite", "nosuch", "--results-dir", str(results), "--out", str(tmp_path / "m"))
    assert code == 2 and "No study" in err and "'nosuch'" in err and not (tmp_path / "m").exists()

    import collections
    import shutil

    Usage = collections.namedtuple("Usage", "total used free")
    with pytest.MonkeyPatch.context() as patch:  # a disk with 1 kB free: said before anything is fetched
        patch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))
        code, _, err = cli("export", "--results-dir", str(results), "--out", str(tmp_path / "small" / "m"))
    assert code == 1 and "has 0.0 MB free" in " ".join(err.split()) and not list((tmp_path / "small").iterdir())
    gone = tmp_path / "gone"
    shutil.copytree(results, gone)
    for folder in (gone / "mlartifacts").rglob("model"):
        shutil.rmtree(folder)
    code, _, err = cli("export", "--results-dir", str(gone), "--out", str(tmp_path / "m"))
    assert code == 2 and "are not in its artifact store" in " ".join(err.split()) and not (tmp_path / "m").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("m.")]  # no staging folder left beside it

    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    for command in (("export",), ("report", "--suite", "tiny")):  # an --out through a file: named before any work
        code, _, err = cli(*command, "--results-dir", str(results), "--out", str(blocker / "x"))
        assert code == 2 and f"--out {blocker / 'x'} cannot be made: {blocker} is a file" in " ".join(err.split())
    assert blocker.read_text() == "a file"

    good = tmp_path / "good"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / f"good.{int(dead.stdout)}.tmp"  # the staging folder of an export killed (kill -9) long ago
    (killed / "fetch-0").mkdir(parents=True)
    (killed / "fetch-0" / "model.safetensors").write_bytes(b"half")
    os.utime(killed, (0, 0))
    assert cli("export", "--dataset", "tinybreast", "--results-dir", str(results), "--out", str(good))[0] == 0
    assert not killed.exists()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "one.png")
    code, _, err = cli("predict", "--model", str(good), str(tmp_path / "one.png"), "--out", str(blocker / "p.csv"))
    assert code == 2 and f"{blocker} is a file" in " ".join(err.split())
    code, _, err = cli("predict", "--model", str(good), str(tmp_path / "one.png"), "--out", str(tmp_path / "new" / "p.csv"))
    assert code == 0 and (tmp_path / "new" / "p.csv").read_text().count("\n") == 2  # its folder made; header and row
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["p.csv"]
    code, _, err = cli("predict", "--model", str(good), str(tmp_path / "one.png"), str(tmp_path / "one.png"),
                       "--out", str(tmp_path / "new" / "p.csv"))  # the same --out again: replaced
    assert code == 0 and (tmp_path / "new" / "p.csv").read_text().count("\n") == 3, err
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["p.csv"]
    code, _, err = cli("predict", "--model", str(good), "")  # not the current folder
    assert code == 2 and "empty IMAGES argument" in err
    code, _, err = cli("predict", "--model", str(good), str(tmp_path / "missing.png"))
    assert code == 2 and "missing.png does not exist" in err
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code, _, err = cli("predict", "--model", str(good), str(tmp_path / "bad.png"))
    assert code == 2 and "Cannot read image" in err and "Traceback" not in err
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(mixed / f"{i}.png")
    (mixed / "1b.png").write_bytes(b"broken")  # in the middle of the folder
    code, _, err = cli("predict", "--model", str(good), str(mixed), "--out", str(tmp_path / "pred.csv"))
    assert code == 2 and "1b.png" in err and not list(tmp_path.glob("pred.csv*"))  # nothing half-written
    (tmp_path / "nopath.csv").write_text("file\nok.png\n")
    code, _, err = cli("predict", "--model", str(good), str(tmp_path / "nopath.csv"))
    assert code == 2 and "needs a header with a path column" in err
    (tmp_path / "absent.csv").write_text("path\nnot-there.png\n")
    code, _, err = cli("predict", "--model", str(good), str(tmp_path / "absent.csv"))
    assert code == 2 and "not-there.png" in err and "do not exist" in err
    weights = good / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
    code, _, err = cli("predict", "--model", str(good), str(tmp_path / "ok.png"))
    assert code == 2 and "the file was changed or damaged" in " ".join(err.split())
    code, _, err = cli("predict", "--model", str(tmp_path), str(tmp_path / "ok.png"))
    assert code == 2 and "is not a freezebench model folder" in " ".join(err.split())


def test_two_exports_into_one_folder_at_once_leave_one_whole_model(study, tmp_path):
    """Both see an empty --out and fetch; the second to finish must not fail with a traceback (rmdir of the
    first's folder) nor mix its files in: one exits 0, the other 2 naming the folder, and the folder loads."""
    from freezebench.engine.saved import load_model

    _, results = study
    target = tmp_path / "shared"
    cmd = [sys.executable, "-m", "freezebench", "export", "--results-dir", str(results), "--out", str(target)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)
    assert [code for code, _ in outcomes] == [0, 2], outcomes
    assert "Traceback" not in outcomes[1][1] and str(target) in " ".join(outcomes[1][1].split())
    assert load_model(target).classes == ["0", "1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]  # no staging folder left
