"""The recommended configuration's seeds as one model (``confirm.ensemble``, on by default): every
confirmation re-run keeps its trained model, the recommendation reports the averaged probabilities'
test intervals, and `freezebench export` writes the seeds' models as one ensemble folder whose
predictions are the mean of what each seed logged for the same test images."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from freezebench.errors import UserError

from .conftest import run_cli_subprocess, write_suite


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny_npz):
    """2 linear-probe trials; the best confirmed with 2 extra seeds (3 seeds in all)."""
    tmp = tmp_path_factory.mktemp("ensemble")
    config = write_suite(tmp / "bench.toml", tiny_npz, strategy='["linear_probe"]', n_trials=2,
                         confirm="{ top = 1, references = false, seeds = 2 }")
    results = tmp / "results"
    proc = subprocess.run([sys.executable, "-m", "freezebench", "run", "--suite", "tiny", "--config", str(config),
                           "--results-dir", str(results)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    return tmp, results, proc.stdout


def _recommendation(results):
    from freezebench.results.recommend import recommendations
    from freezebench.results.tracking import Tracker

    tracker = Tracker(f"sqlite:///{results / 'mlflow.db'}")
    (rec,) = recommendations(tracker, "tinybreast", "f1")
    return tracker, rec


def test_every_seed_keeps_its_model_and_the_recommendation_scores_their_average(seeded):
    from freezebench.results import stats
    from freezebench.results.tracking import load_arrays

    _, results, out = seeded
    tracker, rec = _recommendation(results)
    runs = [rec.best["run_id"], *rec.best["seed_run_ids"]]
    assert len(runs) == 3 and sorted(rec.ensemble_run_ids) == sorted(runs)  # the search trial was the best: kept too
    assert all(tracker.client.get_run(r).data.tags.get("freezebench.model") == "kept" for r in runs)
    logged = [load_arrays(tracker.client, r, "test_predictions.npz") for r in runs]
    mean = np.mean([got["probs"] for got in logged], axis=0)
    expected = stats.intervals(logged[0]["labels"], mean[None])
    assert {m: (i.value, i.low, i.high) for m, i in rec.ensemble.items()} == \
        {m: (i.value, i.low, i.high) for m, i in expected.items()}
    assert "3 seeds' models as one ensemble" in " ".join(out.split())  # `freezebench run` ends with it
    as_json = rec.as_dict()["ensemble"]
    assert sorted(as_json["members"]) == sorted(runs) and as_json["test"]["auc"]["value"] == pytest.approx(expected["auc"].value)


def test_export_writes_the_ensemble_and_it_predicts_the_seeds_mean(seeded, cli, tiny_npz):
    from freezebench.engine.saved import SavedEnsemble, load_model
    from freezebench.results.tracking import load_arrays

    tmp, results, _ = seeded
    tracker, rec = _recommendation(results)
    out = tmp / "ensemble"
    code, text, err = cli("export", "--dataset", "tinybreast", "--results-dir", str(results), "--out", str(out))
    assert code == 0, err
    seeds = sorted(tracker.client.get_run(r).data.params["seed"] for r in rec.ensemble_run_ids)
    assert sorted(p.name for p in out.iterdir()) == sorted(["MODEL.md", "freezebench-ensemble.json", *(f"seed-{s}" for s in seeds)])
    manifest = json.loads((out / "freezebench-ensemble.json").read_text())
    assert sorted(manifest["run_ids"]) == sorted(rec.ensemble_run_ids) and manifest["classes"] == ["0", "1"]
    assert "An ensemble of 3 models" in (out / "MODEL.md").read_text()

    saved = load_model(out)
    assert isinstance(saved, SavedEnsemble) and len(saved.members) == 3
    with np.load(tiny_npz) as npz:
        images = list(npz["test_images"])
    by_seed = {tracker.client.get_run(r).data.params["seed"]: load_arrays(tracker.client, r, "test_predictions.npz")["probs"]
               for r in rec.ensemble_run_ids}
    for member, name in zip(saved.members, manifest["members"]):  # each member is its own seed's model
        np.testing.assert_allclose(member.predict(images), by_seed[name.removeprefix("seed-")], atol=2e-5)
    np.testing.assert_allclose(saved.predict(images), np.mean(list(by_seed.values()), axis=0), atol=2e-5)

    single = tmp / "single"
    code, _, err = cli("export", "--dataset", "tinybreast", "--results-dir", str(results), "--out", str(single), "--single")
    assert code == 0, err
    assert sorted(p.name for p in single.iterdir()) == ["MODEL.md", "freezebench-model.json", "model.safetensors"]


def test_export_registers_the_ensemble_from_the_study_run(seeded, cli):
    tmp, results, _ = seeded
    code, _, err = cli("export", "--dataset", "tinybreast", "--results-dir", str(results), "--out", str(tmp / "reg"),
                       "--register", "tiny-ensemble")
    assert code == 0, err
    tracker, rec = _recommendation(results)
    (version,) = tracker.client.search_model_versions("name = 'tiny-ensemble'")
    parent = tracker.client.get_run(version.run_id)
    assert parent.data.tags["freezebench.role"] == "study" and version.source.endswith("/ensemble_model")
    files = {a.path for a in tracker.client.list_artifacts(parent.info.run_id, "ensemble_model")}
    assert "ensemble_model/freezebench-ensemble.json" in files
    assert version.tags["freezebench.strategy"] == "linear_probe"


def test_a_damaged_ensemble_folder_is_named(seeded, cli, tmp_path):
    import shutil

    from freezebench.engine.saved import load_model

    tmp, results, _ = seeded
    good = tmp_path / "good"
    assert cli("export", "--dataset", "tinybreast", "--results-dir", str(results), "--out", str(good))[0] == 0
    manifest_path = good / "freezebench-ensemble.json"
    manifest = json.loads(manifest_path.read_text())

    hostile = tmp_path / "hostile"
    shutil.copytree(good, hostile)
    (hostile / "freezebench-ensemble.json").write_text(json.dumps({**manifest, "members": ["../good/" + manifest["members"][0]]}))
    with pytest.raises(UserError, match="not the name of a folder beside it"):
        load_model(hostile)

    missing = tmp_path / "missing"
    shutil.copytree(good, missing)
    shutil.rmtree(missing / manifest["members"][1])
    with pytest.raises(UserError, match="is not a freezebench model folder"):
        load_model(missing)

    other = tmp_path / "other"
    shutil.copytree(good, other)
    member = other / manifest["members"][0] / "freezebench-model.json"
    member.write_text(json.dumps({**json.loads(member.read_text()), "classes": ["a", "b"]}))
    with pytest.raises(UserError, match="its classes"):
        load_model(other)

    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
    (good / "freezebench-ensemble.json").write_text("[1, 2]")
    code, _, err = cli("predict", "--model", str(good), str(tmp_path / "ok.png"))
    assert code == 2 and "not a manifest" in err and "Traceback" not in err


def test_ensemble_false_keeps_one_model_per_configuration(tmp_path, tiny_npz):
    from mlflow.tracking import MlflowClient

    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='["linear_probe"]', n_trials=1,
                         confirm="{ top = 1, references = false, seeds = 2, ensemble = false }")
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "freezebench", "run", "--suite", "tiny", "--config", str(config),
                           "--results-dir", str(results)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinybreast")
    runs = [r for role in ("trial", "confirm") for r in client.search_runs([exp.experiment_id], f"tags.`freezebench.role` = '{role}'")]
    assert len(runs) == 3 and [r.data.tags.get("freezebench.model") for r in runs].count("kept") == 1
    assert "as one ensemble" not in " ".join(proc.stdout.split())


def test_the_ensemble_is_compared_with_each_reference_averaged_likewise(tmp_path, tiny_npz):
    """The delivered model (the seeds averaged) against each reference's seeds averaged the same way, on the
    same test images: paired bootstrap, Holm over the references, next to the single-model comparison."""
    from freezebench.results import stats
    from freezebench.results.evidence import Predictions

    config = tmp_path / "bench.toml"
    config.write_text(f"""
[suites.tiny]
datasets = [{{ name = "medmnist_npz", path = "{tiny_npz}", alias = "tinybreast" }}]
backbones = ["mobilenetv2_100"]
sampler = "grid"
n_trials = 3
confirm = {{ top = 1, seeds = 1 }}
[suites.tiny.params]
strategy = ["linear_probe", "full", "freeze_to"]
k = [3]
lr = [3e-3]
epochs = 2
batch_size = 8
image_size = 32
""", encoding="utf-8")
    results = tmp_path / "results"
    proc = run_cli_subprocess("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results),
                              env_extra={"COLUMNS": "300"}, timeout=900)
    assert proc.returncode == 0, proc.stderr
    tracker, rec = _recommendation(results)
    assert rec.ensemble and set(rec.ensemble_comparisons) == set(rec.comparisons)  # every reference: confirmed, 2 seeds
    predictions = Predictions(tracker.client)
    labels, _ = predictions.row(rec.best)
    mine = np.mean([predictions.run(r)["probs"] for r in rec.ensemble_run_ids], axis=0)
    expected = stats.holm([stats.compare(labels, mine, predictions.row(rec.references[ref])[1].mean(axis=0))
                           for ref in rec.ensemble_comparisons])
    assert list(rec.ensemble_comparisons.values()) == expected
    for ref, c in rec.ensemble_comparisons.items():
        assert c != rec.comparisons[ref]  # not the mean-of-seeds comparison printed again
        line = next(line for line in rec.lines() if line.strip().startswith(f"vs {ref} as ensembles"))
        assert f"AUC {c.difference.value:+.3f} [{c.difference.low:+.3f}, {c.difference.high:+.3f}]" in line
        as_json = rec.as_dict()["references"][ref]["as_ensembles"]
        assert as_json["auc_difference"]["value"] == pytest.approx(c.difference.value) and as_json["p_holm"] == c.p_holm
    assert "as ensembles" in " ".join(proc.stdout.split())  # `freezebench run` ends with it
