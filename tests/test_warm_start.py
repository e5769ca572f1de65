"""A warm-started head (head_init = "linear_probe"): the head starts as the logistic regression that
scikit-learn fits on the starting network's features, and a trial records it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler

from freezebench import plugins
from freezebench.backbone import WeightsRequest
from freezebench.engine.datacache import DataCache
from freezebench.engine.device import resolve_compute
from freezebench.engine.preprocess import Normalizer
from freezebench.engine.trial import TrialConfig, run_trial
from freezebench.engine.warmstart import STRENGTHS, fit_head, head_inputs, warm_start_head

from .conftest import run_cli_subprocess, write_suite

CPU = resolve_compute("cpu", "off", False)


def _blobs(classes: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, 20)) * rng.uniform(0.1, 10, size=20) + rng.uniform(-5, 5, size=20)
    x[:, :classes] += 3 * np.eye(classes)[y]  # informative, on features of very different scales
    return x, y


@pytest.mark.parametrize("classes", [2, 3])
def test_the_folded_head_predicts_what_the_regression_chosen_on_validation_predicts(classes):
    train, val, test = _blobs(classes, 90, 0), _blobs(classes, 45, 1), _blobs(classes, 45, 2)
    fitted = fit_head(train, val, classes)
    # the strength is the one with the lowest validation log-loss, refitted here from scratch
    scaler = StandardScaler().fit(train[0])
    losses = {c: log_loss(val[1], LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(train[0]), train[1])
                          .predict_proba(scaler.transform(val[0])), labels=list(range(classes))) for c in STRENGTHS}
    assert fitted.strength == min(losses, key=losses.get) and fitted.val_loss == pytest.approx(losses[fitted.strength])
    reference = LogisticRegression(C=fitted.strength, max_iter=2000).fit(scaler.transform(train[0]), train[1])
    logits = test[0] @ fitted.weight.T + fitted.bias  # the linear layer, on the raw features
    ours = torch.softmax(torch.as_tensor(logits), 1).numpy()
    np.testing.assert_allclose(ours, reference.predict_proba(scaler.transform(test[0])), atol=1e-6)


def test_the_warm_head_starts_as_the_linear_probe_and_trials_share_one_fit(tiny_dataset):
    spec = plugins.backbones().get("mobilenetv2_100")
    cache, data = DataCache(), DataCache().get(tiny_dataset, 32)
    first, second = (spec.build(2, WeightsRequest(True)) for _ in range(2))
    norm = Normalizer(first.mean, first.std)
    notes = [warm_start_head(b, data, norm, batch_size=16, compute=CPU, balanced=False, cache=cache, key=("same",))
             for b in (first, second)]
    assert notes[0] == notes[1] and "24 training images" in notes[0]
    heads = [b.model.get_submodule(b.head.name) for b in (first, second)]
    assert torch.equal(heads[0].weight, heads[1].weight) and torch.equal(heads[0].bias, heads[1].bias)
    # the network's own output on test images is the regression's prediction from the same features
    features = {s: head_inputs(first, data[s].images, norm, 16, CPU).numpy() for s in ("train", "val", "test")}
    labels = {s: data[s].labels.numpy() for s in features}
    fitted = fit_head((features["train"], labels["train"]), (features["val"], labels["val"]), 2)
    # fit_head is scikit-learn's regression (the test above); here: the network computes what it predicts
    expected = torch.softmax(torch.as_tensor(features["test"] @ fitted.weight.T + fitted.bias), 1).numpy()
    first.model.eval()
    with torch.no_grad():
        probs = torch.softmax(first.model(norm(data["test"].images)), 1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_a_linear_probe_that_barely_moves_tests_as_the_fitted_regression(tiny_dataset):
    """End to end through run_trial: with a vanishing LR the trained head is the warm start, so the trial's
    logged test probabilities are the regression's."""
    cfg = TrialConfig(strategy="linear_probe", lr=1e-9, epochs=1, batch_size=8, image_size=32, head_init="linear_probe")
    result = run_trial(cfg, tiny_dataset, plugins.backbones().get("mobilenetv2_100"), WeightsRequest(True),
                       plugins.strategies().get("linear_probe"), DataCache(), inspect=False)
    assert result.head_init.startswith("linear probe: logistic regression") and "C = " in result.head_init
    start = plugins.backbones().get("mobilenetv2_100").build(2, WeightsRequest(True))
    data, norm = DataCache().get(tiny_dataset, 32), Normalizer(start.mean, start.std)
    features = {s: head_inputs(start, data[s].images, norm, 16, CPU).numpy() for s in ("train", "val", "test")}
    fitted = fit_head((features["train"], data["train"].labels.numpy()), (features["val"], data["val"].labels.numpy()), 2)
    expected = torch.softmax(torch.as_tensor(features["test"] @ fitted.weight.T + fitted.bias), 1).numpy()
    np.testing.assert_allclose(result.outcome.test_probs, expected, atol=1e-4)
    cold = run_trial(TrialConfig(strategy="linear_probe", lr=1e-9, epochs=1, batch_size=8, image_size=32),
                     tiny_dataset, plugins.backbones().get("mobilenetv2_100"), WeightsRequest(True),
                     plugins.strategies().get("linear_probe"), DataCache(), inspect=False)
    assert cold.head_init == "" and not np.allclose(cold.outcome.test_probs, expected, atol=1e-2)


def test_a_suite_records_how_each_head_started(tmp_path, tiny_npz):
    from freezebench.results import layout
    from freezebench.results.tracking import Tracker

    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='["freeze_to", "full"]', n_trials=2)
    config.write_text(config.read_text() + 'head_init = "linear_probe"\n')
    results = tmp_path / "results"
    proc = run_cli_subprocess("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert proc.returncode == 0, proc.stderr
    client = Tracker(f"sqlite:///{results / 'mlflow.db'}", str(results / "mlartifacts")).client
    trials = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
              if r.data.tags.get(layout.ROLE) == layout.TRIAL]
    assert len(trials) == 2
    for run in trials:
        assert run.data.params["head_init"] == "linear_probe"
        assert run.data.tags[layout.HEAD_INIT].startswith("linear probe: logistic regression on the starting network's")
        (folder := tmp_path / run.info.run_id).mkdir()
        config_logged = json.loads(open(client.download_artifacts(run.info.run_id, layout.TRIAL_CONFIG, str(folder))).read())
        assert config_logged["head_init"] == "linear_probe"


def test_a_feature_barely_seen_in_training_gets_no_weight():
    """A feature that fired once, weakly, over the training images would be standardised into a huge weight,
    and a test image that fires it strongly into an extreme logit: it is left out instead."""
    (x, y), val, test = _blobs(2, 90, 0), _blobs(2, 45, 1), _blobs(2, 45, 2)
    rare = np.zeros(len(x))
    rare[0] = 1e-5  # a dead ReLU that fired once
    fitted = fit_head((np.column_stack([x, rare]), y), (np.column_stack([val[0], np.zeros(45)]), val[1]), 2)
    assert np.all(fitted.weight[:, -1] == 0)
    # the other features' fit is the one without that column
    plain = fit_head((x, y), val, 2)
    np.testing.assert_allclose(fitted.weight[:, :-1], plain.weight)
    np.testing.assert_allclose(fitted.bias, plain.bias)
    fired = np.column_stack([test[0], np.full(45, 0.05)])
    np.testing.assert_allclose(fired @ fitted.weight.T, test[0] @ plain.weight.T)


@pytest.mark.parametrize("x", [np.ones((6, 4)), np.arange(24.0).reshape(6, 4)])
def test_nothing_to_regress_starts_the_head_at_the_class_frequencies(x):
    """Features that never vary, or a training split of one class: the start is the training prior."""
    y = np.array([0, 0, 0, 0, 1, 1]) if np.ptp(x) == 0 else np.zeros(6, dtype=int)
    fitted = fit_head((x, y), (x[:2], y[:2]), 3)
    assert np.all(fitted.weight == 0) and "nothing to fit" in fitted.describe()
    probs = torch.softmax(torch.as_tensor(fitted.bias), 0).numpy()
    np.testing.assert_allclose(probs, np.bincount(y, minlength=3) / 6, atol=1e-6)
