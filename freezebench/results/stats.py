"""How sure a test metric is, and whether two configurations really differ, from test predictions.

- **Confidence intervals**: ``scipy.stats.bootstrap`` (percentile method) over the test images, each
  class resampled on its own (stratified: every resample keeps the test set's class counts), seeded so
  that a rerun gives the same interval.
- **Paired comparisons** on the same test images: the AUC (or any metric) difference by a paired
  stratified bootstrap (the same resampled images for both configurations), with its interval and a
  two-sided p-value; accuracy by McNemar's exact test (``statsmodels``); p-values of several
  comparisons corrected by Holm's method (``statsmodels``).

A configuration trained with several seeds is given as stacked predictions, shape (seeds, images,
classes): its metric is the mean over seeds, and its interval is the bootstrap over images of that mean
(the same resampled images for every seed), so seed-to-seed noise is averaged and image noise is kept.

On 100-500 test images a difference of a few points of AUC is usually inside the noise: the
intervals say so. See docs/reading-results.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
N_RESAMPLES = 2000
SEED = 20261123  # fixed: the same predictions always give the same interval
INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "f1", "auc")


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _metrics(labels: np.ndarray, probs: np.ndarray, idx: np.ndarray, n_classes: int,
             names: tuple[str, ...] = INTERVAL_METRICS) -> np.ndarray:
    """The metrics ``names`` (of INTERVAL_METRICS) for index resamples ``idx`` of shape (..., N): shape
    (len(names), ...). Stacked predictions (S, N, C): the mean over the S seeds."""
    if probs.ndim == 3:
        return np.mean([_metrics(labels, p, idx, n_classes, names) for p in probs], axis=0)
    y, pred = labels[idx], probs.argmax(-1)[idx]  # (..., N)
    per_class = {"balanced_accuracy": [], "f1": [], "auc": []}
    for c in range(n_classes):
        is_c, pred_c = y == c, pred == c
        if "balanced_accuracy" in names or "f1" in names:
            tp = (is_c & pred_c).sum(-1)
            fp = (~is_c & pred_c).sum(-1)
            fn = (is_c & ~pred_c).sum(-1)
            per_class["balanced_accuracy"].append(tp / np.maximum(is_c.sum(-1), 1))
            per_class["f1"].append(np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0))
        if "auc" in names and not (n_classes == 2 and c == 0):  # binary AUC: the positive class only
            per_class["auc"].append(_resampled_auc(probs[:, c], labels == c, idx))
    return np.stack([(pred == y).mean(-1) if name == "accuracy" else np.mean(per_class[name], 0) for name in names])


def _resampled_auc(scores: np.ndarray, positive: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The Mann-Whitney AUC (ties count half) of ``scores`` for the ``positive`` images, for each resample
    ``idx`` of shape (..., N): from how many times each image is drawn, with no sort per resample."""
    n = len(scores)
    flat = idx.reshape(-1, idx.shape[-1])
    rows = np.arange(flat.shape[0])[:, None]
    counts = np.bincount((rows * n + flat).ravel(), minlength=flat.shape[0] * n).reshape(flat.shape[0], n).astype(float)
    _, level = np.unique(scores, return_inverse=True)  # images with equal scores share a level
    onehot = np.zeros((n, level.max() + 1))
    onehot[np.arange(n), level] = 1
    pos, neg = counts @ (onehot * positive[:, None]), counts @ (onehot * ~positive[:, None])  # (resamples, levels)
    below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower than each level
    wins = (pos * (below + 0.5 * neg)).sum(1)
    return (wins / np.maximum(pos.sum(1) * neg.sum(1), 1)).reshape(idx.shape[:-1])


def point_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    labels, probs = np.asarray(labels), np.asarray(probs)
    values = _metrics(labels, probs, np.arange(len(labels)), probs.shape[-1])
    return dict(zip(INTERVAL_METRICS, map(float, values)))


def _class_samples(labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, ...]:
    return tuple(np.flatnonzero(labels == c) for c in range(n_classes) if (labels == c).any())


def _bootstrap(statistic, labels: np.ndarray, n_classes: int, seed: int):
    from scipy.stats import bootstrap

    samples = _class_samples(labels, n_classes)

    def stat(*parts, axis=-1):
        return statistic(np.concatenate(parts, axis=-1))

    return bootstrap(samples, stat, vectorized=True, paired=False, n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE,
                     method="percentile", random_state=np.random.default_rng(seed))


def intervals(labels: np.ndarray, probs: np.ndarray, seed: int = SEED) -> dict[str, Interval]:
    """95% intervals of accuracy, balanced accuracy, macro F1 and AUC (stratified bootstrap over test images)."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[-1]
    point = point_metrics(labels, probs)
    if len(_class_samples(labels, n_classes)) < 2:  # one class only: AUC undefined, nothing to resample against
        return {}
    result = _bootstrap(lambda idx: _metrics(labels, probs, idx, n_classes), labels, n_classes, seed)
    lows, highs = result.confidence_interval
    return {m: Interval(point[m], float(lo), float(hi)) for m, lo, hi in zip(INTERVAL_METRICS, lows, highs)}


def is_degenerate(probs: np.ndarray) -> bool:
    """A classifier that predicts one class for every test image (its accuracy is the majority rate)."""
    return len(np.unique(np.asarray(probs).argmax(1))) == 1


@dataclass(frozen=True)
class Comparison:
    """``a`` minus ``b`` on the same test images."""

    metric: str
    difference: Interval
    p_value: float  # two-sided, paired bootstrap
    accuracy_p: float  # McNemar's exact test on the two classifiers' right/wrong answers
    n_images: int
    p_holm: float | None = None  # after Holm's correction over the comparisons made together

    @property
    def significant(self) -> bool:
        p = self.p_holm if self.p_holm is not None else self.p_value
        return p < 1 - CONFIDENCE


def mcnemar_p(labels: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """McNemar's exact test (statsmodels) on the images where exactly one of the two is right."""
    from statsmodels.stats.contingency_tables import mcnemar

    right_a, right_b = pred_a == labels, pred_b == labels
    table = [[int((right_a & right_b).sum()), int((right_a & ~right_b).sum())],
             [int((~right_a & right_b).sum()), int((~right_a & ~right_b).sum())]]
    return float(mcnemar(table, exact=True).pvalue)


def compare(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, metric: str = "auc", seed: int = SEED) -> Comparison:
    """Paired comparison of two configurations' predictions on the same test images."""
    labels = np.asarray(labels)
    probs_a, probs_b = np.asarray(probs_a, dtype=np.float64), np.asarray(probs_b, dtype=np.float64)
    if probs_a.shape[-2:] != probs_b.shape[-2:] or len(labels) != probs_a.shape[-2]:
        raise ValueError("a paired comparison needs predictions for the same test images")
    n_classes, only = probs_a.shape[-1], (metric,)
    every = np.arange(len(labels))
    diff = float(_metrics(labels, probs_a, every, n_classes, only)[0] - _metrics(labels, probs_b, every, n_classes, only)[0])
    result = _bootstrap(lambda idx: _metrics(labels, probs_a, idx, n_classes, only)[0] - _metrics(labels, probs_b, idx, n_classes, only)[0],
                        labels, n_classes, seed)
    draws = result.bootstrap_distribution
    if np.allclose(draws, 0):
        p = 1.0
    else:
        p = float(min(1.0, 2 * min((draws <= 0).mean(), (draws >= 0).mean())))
    low, high = result.confidence_interval
    return Comparison(metric, Interval(diff, float(low), float(high)), p,
                      mcnemar_p(labels, _first(probs_a).argmax(1), _first(probs_b).argmax(1)), len(labels))


def _first(probs: np.ndarray) -> np.ndarray:
    """McNemar compares two classifiers' answers: of stacked predictions, the first seed's (the search trial's)."""
    return probs[0] if probs.ndim == 3 else probs


def holm(comparisons: list[Comparison]) -> list[Comparison]:
    """The comparisons with Holm-corrected p-values (``p_holm``), for claims made together."""
    from dataclasses import replace

    from statsmodels.stats.multitest import multipletests

    if not comparisons:
        return []
    corrected = multipletests([c.p_value for c in comparisons], method="holm")[1]
    return [replace(c, p_holm=float(p)) for c, p in zip(comparisons, corrected)]
