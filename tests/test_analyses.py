"""Analyses and the HTML report: figures are real images, the numbers behind them are checked
against direct computations and against what the trials recorded; the report opens in Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from freezebench import plugins
from freezebench.analysis import TrialOutputs, epochs_to_converge, weight_class_correlation
from freezebench.results.stats import intervals

from .conftest import ROOT, write_suite

ARTIFACTS = Path(os.environ.get("FREEZEBENCH_TEST_ARTIFACTS", ROOT / "test-artifacts"))


def _outputs(seed=0, classes=3, dim=16, n=60):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n // classes)
    centres = rng.normal(size=(classes, dim))
    feats = centres[labels] + 0.1 * rng.normal(size=(n, dim))
    weight = centres + 0.01 * rng.normal(size=(classes, dim))  # each row close to its class mean
    logits = feats @ weight.T
    return TrialOutputs("freeze_to", tuple(f"c{i}" for i in range(classes)), labels, logits, feats, weight, np.zeros(classes))


def test_weight_class_correlation_matches_direct_computation():
    o = _outputs()
    corr = weight_class_correlation(o)
    for i in range(3):
        for j in range(3):
            mean_j = o.penultimate[o.labels == j].mean(0)
            assert corr[i, j] == pytest.approx(np.corrcoef(o.head_weight[i], mean_j)[0, 1])
    assert np.all(np.diag(corr) > 0.99)  # weights built from the class means


def test_epochs_to_converge():
    assert epochs_to_converge([1.0, 0.5, 0.3, 0.302, 0.4]) == 3
    assert epochs_to_converge([0.2, 0.5]) == 1


@pytest.mark.parametrize("name", ["output_scores", "fc_weights", "weight_class_correlation"])
def test_trial_figures_are_real_images(name, tmp_path):
    outputs = plugins.analyses().get(name).run(_outputs())
    figure = next(o for o in outputs if o.figure is not None)
    path = tmp_path / figure.name
    figure.figure.savefig(path)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 300
    assert figure.title and figure.figure.axes[0].get_xlabel() and figure.figure.axes[0].get_title()
    assert any(o.data is not None for o in outputs)


def test_output_scores_two_classes_are_the_logits():
    o = _outputs(classes=2)
    data = next(x.data for x in plugins.analyses().get("output_scores").run(o) if x.data)
    assert np.allclose(np.array(data["points"]), o.logits, atol=1e-6) and data["axes"] == ["score: c0", "score: c1"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_npz):
    """A small grid of freeze points x learning rates, run through the CLI."""
    tmp = tmp_path_factory.mktemp("sweep")
    config = write_suite(tmp / "bench.toml", tiny_npz, strategy='"freeze_to"', n_trials=20, extra='sampler = "grid"\n')
    config.write_text(config.read_text().replace("k = { low = 1, high = -1 }", "k = [2, 5, 8]")
                      .replace("lr = { low = 1e-3, high = 1e-2, log = true }", "lr = [1e-3, 1e-2]").replace("epochs = 2", "epochs = 1"))
    results = tmp / "results"
    import sys

    proc = subprocess.run([sys.executable, "-m", "freezebench", "run", "--suite", "tiny", "--config", str(config),
                           "--results-dir", str(results)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (tmp / "run.log").write_text(proc.stdout)
    return results


def test_run_announces_the_grid_size_not_the_cap(sweep):
    out = " ".join((sweep.parent / "run.log").read_text().split())  # unwrapped
    assert ": 1 study, 6 trials; results in" in out  # n_trials = 20, but the grid has 3 x 2 points


FULL_SET = {"output_scores.png", "fc_weights.png", "weight_class_correlation.png", "weight_class_correlation.json",
            "grad_cam.png", "grad_cam.npz", "deconv_view.png", "deconv_view.npz", "test_predictions.npz"}


def test_analyses_run_on_each_trial_that_was_its_cases_best_so_far(sweep):
    """analyses = "best" (the default): a trial is analysed when, as it finished, it tied or beat every earlier
    trial of its case (freeze_to k): so every case's final best trial has the analyses, and a trial beaten
    earlier in its case has only its predictions (what the leaderboard's statistics need)."""
    from mlflow.tracking import MlflowClient

    from freezebench.results import layout

    client = MlflowClient(tracking_uri=f"sqlite:///{sweep / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinybreast")
    runs = sorted(client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'trial'"),
                  key=lambda r: int(r.data.tags[layout.OPTUNA_TRIAL]))  # one process: trial order is finish order
    assert len(runs) == 6
    seen: dict[str, list[float]] = {}
    for run in runs:
        case, value = run.data.params["k"], run.data.metrics["best_val_f1"]
        expected = value >= max(seen.get(case, [value]))
        seen.setdefault(case, []).append(value)
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert run.data.tags[layout.ANALYSED] == str(expected).lower(), run.info.run_name
        if expected:
            assert FULL_SET <= names, run.info.run_name
        else:
            assert "test_predictions.npz" in names and not any(n.endswith(".png") for n in names), names
    for case, values in seen.items():  # the best of each case is analysed, whatever the order
        best = next(r for r in runs if r.data.params["k"] == case and r.data.metrics["best_val_f1"] == max(values))
        assert best.data.tags[layout.ANALYSED] == "true"


def test_analyses_all_and_none(tmp_path, tiny_npz, cli):
    """analyses = "all" analyses every trial and every confirmation re-run; "none" none of them."""
    from mlflow.tracking import MlflowClient

    from freezebench.results import layout

    for policy in ("all", "none"):
        config = write_suite(tmp_path / f"{policy}.toml", tiny_npz, strategy='"linear_probe"', n_trials=2,
                             extra=f'analyses = "{policy}"\n', confirm="{ top = 1, references = false, seeds = 1 }")
        results = tmp_path / policy
        code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
        assert code == 0, err
        client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
        exp = client.get_experiment_by_name("tinybreast")
        runs = [r for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get(layout.ROLE) in (layout.TRIAL, layout.CONFIRM)]
        assert {r.data.tags[layout.ROLE] for r in runs} == {"trial", "confirm"}
        for run in runs:
            names = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert run.data.tags[layout.ANALYSED] == str(policy == "all").lower()
            assert ("fc_weights.png" in names) == (policy == "all") and "test_predictions.npz" in names


def test_a_trials_figures_are_drawn_logged_and_closed_one_analysis_at_a_time(tmp_path, tiny_npz, cli, monkeypatch):
    """pyplot keeps every figure until it is closed: a trial holds the figures of one analysis at a time
    (at most the test set's confusion matrix and ROC together), not all of its figures at once."""
    import matplotlib.pyplot as plt
    from mlflow.tracking import MlflowClient

    real, open_at_write = MlflowClient.log_figure, {}

    def counting(self, run_id, figure, artifact_file, **kwargs):
        open_at_write.setdefault(run_id, []).append((artifact_file, len(plt.get_fignums())))
        return real(self, run_id, figure, artifact_file, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_figure", counting)
    config = write_suite(tmp_path / "all.toml", tiny_npz, strategy='"freeze_to"', n_trials=2, extra='analyses = "all"\n')
    code, _, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(tmp_path / "results"))
    assert code == 0, err
    trials = [writes for writes in open_at_write.values() if any(name == "test_roc.png" for name, _ in writes)]
    assert len(trials) == 2
    for writes in trials:
        assert len(writes) >= 5, writes  # the paper analyses, Grad-CAM, deconvnet, the test figures
        assert max(n for _, n in writes) <= 2, writes
    assert plt.get_fignums() == []


def _records(sweep):
    from freezebench.results.report import study_records
    from freezebench.results.tracking import Tracker

    tracker = Tracker(f"sqlite:///{sweep / 'mlflow.db'}")
    exp = tracker.client.get_experiment_by_name("tinybreast")
    parent = tracker.client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'study'")[0]
    return study_records(tracker, exp.experiment_id, parent)


def _best_of_each_k(records):
    best = {}
    for t in records.trials:
        k = int(t["params"]["k"])
        if k not in best or t["metrics"]["best_val_f1"] > best[k]["metrics"]["best_val_f1"]:
            best[k] = t
    return best


def test_roc_per_case_is_each_cases_best_trial_with_its_recorded_auc(sweep):
    records = _records(sweep)
    outputs = plugins.analyses().get("roc_per_case").run(records)
    data = next(o.data for o in outputs if o.data)
    best = _best_of_each_k(records)
    assert [d["case"] for d in data] == ["freeze_to k=8", "freeze_to k=5", "freeze_to k=2"]  # most frozen first
    for d in data:
        trial = best[int(d["case"].split("=")[1])]
        assert d["run"] == trial["run_name"] and d["auc"] == pytest.approx(trial["metrics"]["test_auc"], abs=1e-9)
    figure = next(o.figure for o in outputs if o.figure is not None)
    assert len(figure.axes[0].get_lines()) == 4 and figure.axes[0].get_xlabel() == "false positive rate"


def test_roc_per_case_plots_the_cases_validation_ranks_first_and_keeps_every_case_in_its_data():
    """A 53-point sweep (paper 002) cannot be read as 53 curves: the figure shows the 10 best on validation."""
    from freezebench.analysis import StudyRecords
    from freezebench_plugins.paper_analyses import MAX_ROC_CURVES

    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 10)
    trials, arrays = [], {}
    for k in range(14):
        probs = np.clip(labels * 0.5 + rng.random(20) * 0.8, 0, 1)
        arrays[f"r{k}"] = {"labels": labels, "probs": np.stack([1 - probs, probs], 1)}
        trials.append({"run_id": f"r{k}", "run_name": f"t{k}", "state": "complete", "params": {"strategy": "freeze_to", "k": str(k)},
                       "metrics": {"best_val_f1": (k * 5 % 14) / 14, "trainable_params": 100 - k}})  # distinct, not in k order
    records = StudyRecords("s", "d", "f1", ("a", "b"), trials, load_arrays=lambda run_id, name: arrays[run_id])
    outputs = plugins.analyses().get("roc_per_case").run(records)
    assert len(next(o.data for o in outputs if o.data)) == 14
    figure = next(o.figure for o in outputs if o.figure is not None)
    shown = {line.get_label().split(" (AUC")[0] for line in figure.axes[0].get_lines()} - {"_child" + str(i) for i in range(99)}
    best = sorted(trials, key=lambda t: -t["metrics"]["best_val_f1"])[:MAX_ROC_CURVES]
    assert {l for l in shown if l.startswith("freeze_to")} == {f"freeze_to k={t['params']['k']}" for t in best}
    assert "the 10 of 14 cases best on validation f1" in figure.axes[0].get_title()


def test_grad_cam_comparison_puts_each_cases_maps_side_by_side(sweep):
    records = _records(sweep)
    outputs = plugins.analyses().get("grad_cam_comparison").run(records)
    columns = next(o.data for o in outputs if o.data)
    best = _best_of_each_k(records)
    assert [c["case"] for c in columns] == ["freeze_to k=8", "freeze_to k=5", "freeze_to k=2"]
    assert [c["trainable_params"] for c in columns] == sorted(c["trainable_params"] for c in columns)
    for c in columns:
        assert c["run_id"] == best[int(c["case"].split("=")[1])]["run_id"]
        assert c["layer"] == str(records.arrays(c["run_id"], "grad_cam.npz")["layer"])
    figure = next(o.figure for o in outputs if o.figure is not None)
    assert len(figure.axes) == 4 * (1 + 3)  # 4 chosen images x (the image + 3 cases)
    first = records.arrays(columns[0]["run_id"], "grad_cam.npz")
    shown = figure.axes[1].get_images()[1].get_array()  # the first case's overlay of the first image
    from freezebench_plugins.saliency import upsample

    assert np.allclose(np.asarray(shown), upsample(first["cams"][0], first["images"].shape[1]))


def test_deconv_comparison_shows_each_cases_views_per_layer(sweep):
    records = _records(sweep)
    outputs = plugins.analyses().get("deconv_comparison").run(records)
    columns = next(o.data for o in outputs if o.data)
    best = _best_of_each_k(records)
    assert [c["case"] for c in columns] == ["freeze_to k=8", "freeze_to k=5", "freeze_to k=2"]
    assert all(c["run_id"] == best[int(c["case"].split("=")[1])]["run_id"] for c in columns)
    assert columns[0]["rule"] == "guided" and len(columns[0]["layers"]) == 5  # MobileNetV2: strided convolutions
    figure = next(o.figure for o in outputs if o.figure is not None)
    assert len(figure.axes) == 2 * 5 * (1 + 3)  # (2 images x 5 layers) rows x (the image + 3 cases)
    views = records.arrays(columns[2]["run_id"], "deconv_view.npz")["views"]
    shown = figure.axes[3 * 4 + 3].get_images()[0].get_array()  # row: image 0, layer 3; column: the third case
    assert np.array_equal(np.asarray(shown), views[3, 0])
    # the frozen layers are the same network in every case: the k=8 and k=5 trials share the first 5 units
    k8, k5 = (records.arrays(c["run_id"], "deconv_view.npz")["views"] for c in columns[:2])
    assert np.array_equal(k8[0], k5[0]) and not np.array_equal(k8[-1], k5[-1])


def test_metric_vs_freeze_point_equals_recorded_metrics(sweep):
    records = _records(sweep)
    assert len(records.trials) == 6
    outputs = plugins.analyses().get("metric_vs_freeze_point").run(records)
    data = next(o.data for o in outputs if o.data)
    assert set(data) == {"0.001", "0.01"}
    for t in records.trials:
        point = next(p for p in data[f"{float(t['params']['lr']):g}"] if p["k"] == int(t["params"]["k"]))
        assert point["test_f1"] == t["metrics"]["test_f1"] and point["val_f1"] == t["metrics"]["best_val_f1"]
        # the shaded band: the trial's own stratified bootstrap interval from its logged test predictions
        pred = records.arrays(t["run_id"], "test_predictions.npz")
        expected = intervals(pred["labels"], pred["probs"])["f1"]
        assert point["test_f1_ci"] == [expected.low, expected.high]
        assert expected.low <= expected.value <= expected.high  # equal for a one-class predictor: its F1 does not vary
    curves = next(o.data for o in plugins.analyses().get("val_loss_curves").run(records) if o.data)
    assert len(curves) == 6 and all(c["epochs_to_converge"] == 1 for c in curves)  # one epoch each


def test_report_is_self_contained_and_opens_in_chromium(sweep, cli, tmp_path):
    code, out, _ = cli("report", "--suite", "tiny", "--results-dir", str(sweep), "--out", str(tmp_path))
    assert code == 0
    page = (tmp_path / "tiny.html").read_text()
    assert "Leaderboard: tinybreast" in page and page.count("data:image/webp;base64,") >= 5
    assert 'src="http' not in page and "<script" not in page  # nothing fetched from elsewhere
    # read top down: the answer (with its comparison figure), across datasets, leaderboards, the papers' views, provenance
    order = [page.index(h) for h in ("1. The answer", "Recommended for tinybreast", "<svg", "2. Across datasets",
                                     "3. Leaderboards", "4. The papers' views", "5. Provenance")]
    assert order == sorted(order)
    assert len(page.encode()) < 1_000_000
    assert "[suites.tiny]" in page and "split hash" in page and "{'train'" not in page  # TOML and tables, not reprs
    assert "metric_vs_freeze_point" in page and "Inside the networks" in page
    assert "grad_cam_comparison" in page and "roc_per_case" in page and "freeze_to: grad cam" in page
    assert "deconv_comparison" in page and "freeze_to: deconv view" in page
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{sweep / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinybreast")
    parent = client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'study'")[0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "analyses")}
    assert {"analyses/metric_vs_freeze_point.png", "analyses/grad_cam_comparison.png", "analyses/roc_per_case.png",
            "analyses/deconv_comparison.png"} <= logged
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("FREEZEBENCH_REQUIRE_BROWSER"):
            pytest.fail("chromium is required but not installed")
        pytest.skip("chromium is not installed")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tempfile.mkdtemp()}", "--window-size=1300,2400"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", (tmp_path / "tiny.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    subprocess.run([chromium, *flags, f"--screenshot={shot}", (tmp_path / "tiny.html").as_uri()], capture_output=True, timeout=120)
    assert "Leaderboard: tinybreast" in dom and shot.stat().st_size > 20_000
