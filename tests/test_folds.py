"""k-fold suites: each fold's study chooses and tests on its own fold; the leaderboard pools the chosen
configurations' test predictions (every image tested once) and never compares rows of different folds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from freezebench.results import layout, stats
from freezebench.results.tracking import load_arrays

from .conftest import write_suite


@pytest.fixture(scope="module")
def kfold_results(tmp_path_factory, tiny_npz):
    from freezebench.cli import main

    tmp = tmp_path_factory.mktemp("kfold")
    config = write_suite(tmp / "bench.toml", tiny_npz, strategy='"linear_probe"', n_trials=2,
                         extra='sampler = "grid"\n').read_text()
    config = config.replace('alias = "tinybreast"', 'alias = "tinybreast", split = "kfold", folds = 3')
    config = config.replace("lr = { low = 1e-3, high = 1e-2, log = true }", "lr = [1e-3, 2e-2]")
    (tmp / "bench.toml").write_text(config)
    results = tmp / "results"
    with pytest.raises(SystemExit) as exc:
        main(["run", "--suite", "tiny", "--config", str(tmp / "bench.toml"), "--results-dir", str(results)])
    assert exc.value.code == 0
    return results


def test_layout_names_fold_studies_and_reads_them_back():
    assert layout.study_name("s", "d", "b") == "s/d/b" and layout.fold_of("s/d/b") is None
    assert layout.study_name("s", "d", "b", 3) == "s/d/fold3/b" and layout.fold_of("s/d/fold3/b") == ("s/d/b", 3)
    assert layout.fold_of("s/d/foldx/b") is None


def test_the_leaderboard_pools_each_folds_choice_and_compares_only_within_a_fold(cli, kfold_results):
    import mlflow

    code, text, err = cli("leaderboard", "--dataset", "tinybreast", "--results-dir", str(kfold_results), "--json")
    assert code == 0, err
    rows = json.loads(text)
    folds = {layout.fold_of(r["study"])[1] for r in rows}
    assert folds == {0, 1, 2} and len(rows) == 6  # two learning rates in each of three folds, each once
    assert len({(r["study"], r["lr"]) for r in rows}) == 6
    first = rows[0]
    for r in rows[1:]:
        if r["split_hash"] != first["split_hash"]:
            assert r["tied_with_first"] is None and "vs_first_p" not in r  # another fold: other test images

    client = mlflow.MlflowClient(f"sqlite:///{kfold_results / 'mlflow.db'}")
    picks = {}
    for r in rows:  # ranked: a fold's first row is its choice
        picks.setdefault(layout.fold_of(r["study"])[1], r)
    arrays = [load_arrays(client, picks[f]["run_id"], layout.TEST_PREDICTIONS) for f in sorted(picks)]
    labels = np.concatenate([a["labels"] for a in arrays])
    probs = np.concatenate([a["probs"] for a in arrays])
    assert len(labels) == 48  # the 48 images of the tiny dataset, each in one fold's test set
    auc = stats.point_metrics(labels, probs)["auc"]

    code, text, err = cli("leaderboard", "--dataset", "tinybreast", "--results-dir", str(kfold_results))
    assert code == 0, err
    flat = " ".join(text.split())
    assert "Cross-validated, tiny/tinybreast/mobilenetv2_100 (3 folds" in flat
    assert "48 test images, each tested once" in flat and f"auc {auc:.3f} [" in flat  # one seed: its own AUC
    assert "auc per fold:" in flat and "Chosen: linear_probe" in flat


def test_the_report_leads_with_the_cross_validated_answer_and_labels_each_fold(cli, kfold_results, tmp_path):
    code, _, err = cli("report", "--suite", "tiny", "--results-dir", str(kfold_results), "--out", str(tmp_path / "r"))
    assert code == 0, err
    page = (tmp_path / "r" / "tiny.html").read_text()
    assert "tiny/tinybreast/mobilenetv2_100: cross-validated" in page and "48 test images, each tested once" in page
    assert page.index("cross-validated") < page.index("Leaderboard: tinybreast")
    assert all(f"Recommended for tinybreast x mobilenetv2_100, fold {f}:" in page for f in range(3))


def test_pooling_is_per_seed_then_the_mean_over_seeds():
    from freezebench.results.folds import cross_validated

    rng = np.random.default_rng(0)
    labels = {f: rng.integers(0, 2, 20 + f) for f in range(3)}
    probs = {}
    for f in range(3):  # 3 seeds per fold, seeds disagreeing so that an ensemble would score differently
        p1 = rng.random((3, len(labels[f])))
        probs[f] = np.stack([1 - p1, p1], axis=-1)
    rows = [{"study": f"s/d/fold{f}/b", "run_id": str(f), "test_auc": 0.5, "test_accuracy": 0.5} for f in (2, 0, 1)]

    class Fake:
        def row(self, row):
            f = int(row["run_id"])
            return labels[f], probs[f]

    (cv,) = cross_validated(rows, Fake())
    y = np.concatenate([labels[f] for f in range(3)])
    per_seed = [stats.point_metrics(y, np.concatenate([probs[f][s] for f in range(3)]))["accuracy"] for s in range(3)]
    assert cv.n_test == 63 and cv.pooled["accuracy"].value == pytest.approx(np.mean(per_seed))
    ensemble = stats.point_metrics(y, np.concatenate([probs[f].mean(0) for f in range(3)]))["accuracy"]
    assert ensemble != pytest.approx(np.mean(per_seed))  # the two differ here: the test can tell them apart
    assert sorted(cv.picks) == [0, 1, 2] and cv.per_fold["auc"] == [0.5, 0.5, 0.5]
