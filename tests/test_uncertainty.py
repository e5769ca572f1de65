"""Test metrics carry their uncertainty, checked against known answers; the recommendation compares
the chosen configuration with linear probing and full fine-tuning on the same test images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from freezebench.results import stats

from .conftest import write_suite


def _predictions(n_per_class: int, p_right: float, seed: int = 0):
    """Two balanced classes; each image is classified right with probability ``p_right``."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n_per_class)
    right = rng.random(len(labels)) < p_right
    score = np.where(right == (labels == 1), 0.5 + rng.random(len(labels)) / 2, rng.random(len(labels)) / 2)
    return labels, np.stack([1 - score, score], 1)


def test_point_metrics_equal_scikit_learn():
    labels, probs = _predictions(60, 0.75)
    labels = np.concatenate([labels, [1] * 17])  # unbalanced
    probs = np.concatenate([probs, np.tile([[0.3, 0.7]], (17, 1))])
    got = stats.point_metrics(labels, probs)
    pred = probs.argmax(1)
    assert got["accuracy"] == pytest.approx((pred == labels).mean())
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    assert got["f1"] == pytest.approx(f1_score(labels, pred, average="macro"))
    assert got["auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]))


def test_accuracy_interval_matches_the_closed_form():
    """For n images each right with probability p, the 95% interval is p +- 1.96 sqrt(p (1-p) / n)."""
    labels, probs = _predictions(1000, 0.8)
    interval = stats.intervals(labels, probs)["accuracy"]
    p, n = interval.value, len(labels)
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    assert interval.low == pytest.approx(p - half, abs=0.006) and interval.high == pytest.approx(p + half, abs=0.006)


def test_intervals_are_seeded_and_stratified():
    labels, probs = _predictions(40, 0.7)
    assert stats.intervals(labels, probs) == stats.intervals(labels, probs)  # a rerun gives the same intervals
    perfect = np.eye(2)[labels]
    exact = stats.intervals(labels, perfect)
    assert all((i.low, i.value, i.high) == (1.0, 1.0, 1.0) for i in exact.values())  # no resample can be wrong


def test_mcnemar_on_a_hand_made_table():
    from scipy.stats import binomtest

    labels = np.zeros(30, dtype=int)
    pred_a = np.zeros(30, dtype=int)
    pred_b = np.zeros(30, dtype=int)
    pred_b[:10] = 1  # b wrong where a is right: 10 images
    pred_a[10:12] = 1  # a wrong where b is right: 2 images; both right on the other 18
    assert stats.mcnemar_p(labels, pred_a, pred_b) == pytest.approx(binomtest(2, 12, 0.5).pvalue)


def test_identical_configurations_are_tied():
    labels, probs = _predictions(50, 0.7)
    c = stats.compare(labels, probs, probs.copy())
    assert (c.difference.value, c.difference.low, c.difference.high) == (0.0, 0.0, 0.0)
    assert c.p_value == 1.0 and c.accuracy_p == 1.0 and not c.significant


def test_a_real_difference_is_found_and_holm_corrects():
    labels, good = _predictions(150, 0.9, seed=1)
    _, poor = _predictions(150, 0.6, seed=2)
    c = stats.compare(labels, good, poor)
    assert c.difference.value > 0.2 and c.difference.low > 0 and c.p_value < 0.01 and c.accuracy_p < 0.01
    near = stats.compare(labels, good, _predictions(150, 0.88, seed=3)[1])
    corrected = stats.holm([c, near])
    assert corrected[0].significant and not corrected[1].significant
    assert corrected[1].p_holm >= near.p_value


def test_a_classifier_of_one_class_is_flagged():
    labels, probs = _predictions(20, 0.7)
    assert stats.is_degenerate(np.tile([[0.9, 0.1]], (40, 1))) and not stats.is_degenerate(probs)


def test_comparisons_need_the_same_test_images():
    labels, probs = _predictions(20, 0.7)
    with pytest.raises(ValueError, match="same test images"):
        stats.compare(labels, probs, probs[:-1])


@pytest.fixture(scope="module")
def three_strategies(tmp_path_factory, tiny_npz):
    """A grid over linear probing, freeze_to k=5 and full fine-tuning: one trial each."""
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("rec")
    config = write_suite(tmp / "bench.toml", tiny_npz, strategy='["linear_probe", "freeze_to", "full"]', n_trials=3,
                         extra='sampler = "grid"')
    config.write_text(config.read_text().replace("k = { low = 1, high = -1 }", "k = 5")
                      .replace("lr = { low = 1e-3, high = 1e-2, log = true }", "lr = 0.003"))
    results = tmp / "results"
    proc = subprocess.run([sys.executable, "-m", "freezebench", "run", "--suite", "tiny", "--config", str(config),
                           "--results-dir", str(results)], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    return results, proc.stdout


def test_every_trial_records_intervals_and_the_leaderboard_shows_them(three_strategies, cli):
    import json

    from mlflow.tracking import MlflowClient

    results, _ = three_strategies
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinybreast")
    for run in client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'trial'"):
        m = run.data.metrics
        for name in stats.INTERVAL_METRICS:
            assert m[f"test_{name}_ci_low"] <= m[f"test_{name}"] <= m[f"test_{name}_ci_high"]
        assert run.data.tags["freezebench.degenerate"] in ("true", "false")
    code, out, _ = cli("leaderboard", "--dataset", "tinybreast", "--json", "--results-dir", str(results))
    rows = json.loads(out)
    assert code == 0 and len(rows) == 3
    assert all(r["test_auc_ci"][0] <= r["test_auc"] <= r["test_auc_ci"][1] and "test_balanced_accuracy" in r for r in rows)


def test_the_recommendation_leads_and_is_the_paired_test(three_strategies, cli):
    from mlflow.tracking import MlflowClient

    from freezebench.results.recommend import recommendations
    from freezebench.results.tracking import Tracker, load_arrays

    results, run_out = three_strategies
    text = " ".join(run_out.split())
    assert "Recommended for tinybreast x mobilenetv2_100:" in text and "95% CI" in text
    code, out, _ = cli("leaderboard", "--dataset", "tinybreast", "--results-dir", str(results))
    assert code == 0 and out.index("Recommended for tinybreast") < out.index("Leaderboard tinybreast")

    tracker = Tracker(f"sqlite:///{results / 'mlflow.db'}")
    (rec,) = recommendations(tracker, "tinybreast", "f1")
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tinybreast").experiment_id], "tags.`freezebench.role` = 'trial'")
    best = max(runs, key=lambda r: r.data.metrics["best_val_f1"])
    assert rec.best["run_id"] == best.info.run_id
    expected_refs = {"linear_probe", "full"} - {best.data.params["strategy"]}
    assert set(rec.comparisons) == expected_refs  # the references, never the chosen trial against itself
    chosen = load_arrays(client, best.info.run_id, "test_predictions.npz")
    for ref, comparison in rec.comparisons.items():
        other = next(r for r in runs if r.data.params["strategy"] == ref)
        again = stats.compare(chosen["labels"], chosen["probs"], load_arrays(client, other.info.run_id, "test_predictions.npz")["probs"])
        assert comparison.difference == again.difference and comparison.p_holm >= again.p_value
        assert f"vs {ref} (lr 0.003): AUC {comparison.difference.value:+.3f}" in text
    assert rec.intervals["auc"].value == pytest.approx(best.data.metrics["test_auc"])


def test_resampled_auc_equals_scikit_learn_on_every_resample_with_ties():
    rng = np.random.default_rng(3)
    labels = (rng.random(120) < 0.3).astype(int)
    scores = np.round(rng.normal(labels, 1.0), 1)  # rounded: many tied scores, across classes too
    idx = rng.integers(0, 120, (40, 120))
    got = stats._resampled_auc(scores, labels == 1, idx)
    assert np.allclose(got, [roc_auc_score(labels[i], scores[i]) for i in idx], atol=1e-12)
    three = rng.integers(0, 3, 90)
    probs = rng.dirichlet([1, 1, 1], 90)
    assert stats.point_metrics(three, probs)["auc"] == pytest.approx(roc_auc_score(three, probs, multi_class="ovr"))


def test_recommend_prints_the_answer_alone_and_as_json_for_scripts(three_strategies, cli, tmp_path):
    """`freezebench recommend` gives the answer `run` ends with: the same lines as text, and as JSON the first
    leaderboard row's configuration, its intervals and the paired comparisons with the references."""
    import json

    results, _ = three_strategies
    code, text, _ = cli("recommend", "--dataset", "tinybreast", "--results-dir", str(results))
    _, board, _ = cli("leaderboard", "--dataset", "tinybreast", "--results-dir", str(results))
    assert code == 0 and text.startswith("Recommended for tinybreast x mobilenetv2_100:")
    assert board.startswith(text)  # the leaderboard leads with exactly these lines
    code, out, _ = cli("recommend", "--dataset", "tinybreast", "--results-dir", str(results), "--json")
    (rec,) = json.loads(out)
    _, rows_out, _ = cli("leaderboard", "--dataset", "tinybreast", "--results-dir", str(results), "--json")
    first = json.loads(rows_out)[0]
    assert code == 0 and rec["configuration"]["run_id"] == first["run_id"]
    assert rec["configuration"]["strategy"] == first["strategy"] and rec["configuration"]["lr"] == first["lr"]
    auc = rec["test"]["auc"]
    assert auc["low"] <= auc["value"] <= auc["high"] and auc["value"] == pytest.approx(first["test_auc"])
    assert set(rec["references"]) | set(rec["not_compared"]) == {"linear_probe", "full"} - {first["strategy"]}
    for ref in rec["references"].values():
        d = ref["auc_difference"]
        assert d["low"] <= d["value"] <= d["high"] and 0 <= ref["p_holm"] <= 1 and ref["significant"] == (ref["p_holm"] < 0.05)
    assert rec["text"] == text.rstrip("\n").split("\n")
    code, _, err = cli("recommend", "--dataset", "nosuch", "--results-dir", str(results))
    assert code == 2 and "nosuch" in err and "tinybreast" in err
    code, _, err = cli("recommend", "--dataset", "tinybreast", "--results-dir", str(tmp_path / "empty"))
    assert code == 2 and "No results store" in err
