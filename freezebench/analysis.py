"""Analyses: views inside trained networks (per trial) and across a study's trials.

An analysis plugin registers objects with ``name``, ``summary``, ``scope`` ("trial" or "study")
and ``run(inputs) -> list[Output]``. Trial analyses get the trained model's test-set outputs
(``TrialOutputs``); study analyses get the study's trial records from MLflow (``StudyRecords``).
Each output is a figure (matplotlib), data (JSON) or arrays (NPZ), saved as an MLflow artifact;
figures with ``in_report`` are shown in ``freezebench report`` under their ``section``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from . import plugins
from .records import HIGHER_IS_BETTER, TrialOutputs

__all__ = ["Output", "TrialOutputs", "StudyRecords", "pyplot", "colour", "best_per_group", "best_per_case", "ranked",
           "trial_analyses", "one_at_a_time", "close_figures", "case_name", "weight_class_correlation", "epochs_to_converge"]

DEFAULT_SECTION = "Inside the networks"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colour(strategy: str) -> str:
    """The strategy's own ``colour`` when it declares one, else a stable colour from tab20."""
    registry = plugins.strategies()
    own = getattr(registry.get(strategy), "colour", None) if strategy in registry else None
    if own:
        return own
    import matplotlib

    palette = matplotlib.colormaps["tab20"].colors
    return matplotlib.colors.to_hex(palette[sum(map(ord, strategy)) % len(palette)])


@dataclass
class Output:
    """One artifact of an analysis: ``name`` is its file name: "*.png" for a figure, "*.json" for
    data, "*.npz" for arrays. ``in_report``: show this figure in ``freezebench report`` (under
    ``section``, with ``title``)."""

    name: str
    figure: Any = None
    data: Any = None
    title: str = ""
    arrays: dict[str, np.ndarray] | None = None
    in_report: bool = True
    section: str = DEFAULT_SECTION


@dataclass
class StudyRecords:
    """A study's trials as MLflow recorded them."""

    study: str
    dataset: str
    metric: str
    class_names: tuple[str, ...] = ()
    trials: list[dict] = field(default_factory=list)  # {run_id, run_name, params, metrics, history, state}
    load_arrays: Any = None  # (run_id, artifact name) -> dict of arrays, or None when the trial has none
    load_intervals: Any = None  # run_id -> {metric: (value, low, high)}: 95% CIs from the trial's test predictions

    def arrays(self, run_id: str, name: str) -> dict[str, np.ndarray] | None:
        return self.load_arrays(run_id, name) if self.load_arrays is not None else None

    def test_interval(self, run_id: str, metric: str) -> tuple[float, float, float] | None:
        """The trial's test ``metric`` with its 95% confidence interval (stratified bootstrap over the test
        images, as everywhere in freezebench), or None when the trial kept no test predictions."""
        found = self.load_intervals(run_id) if self.load_intervals is not None else None
        return (found or {}).get(metric)


def best_per_group(trials: Iterable[dict], metric: str, group: Callable[[dict], Any]) -> dict[Any, dict]:
    """The best complete trial of each group by ``best_val_<metric>``, the right way round for the
    metric (lowest loss, highest F1). Ties keep the first trial seen; trials without the metric skip."""
    key, higher = f"best_val_{metric}", HIGHER_IS_BETTER[metric]
    best: dict[Any, dict] = {}
    for t in trials:
        value = t["metrics"].get(key)
        if t.get("state") != "complete" or value is None or value != value:
            continue
        g = group(t)
        if g not in best or (value > best[g]["metrics"][key] if higher else value < best[g]["metrics"][key]):
            best[g] = t
    return best


def ranked(trials: Iterable[dict], metric: str) -> list[dict]:
    """Trials best first by ``best_val_<metric>`` (stable for ties)."""
    key = f"best_val_{metric}"
    return sorted(trials, key=lambda t: t["metrics"][key], reverse=HIGHER_IS_BETTER[metric])


def weight_class_correlation(outputs: TrialOutputs) -> np.ndarray:
    """(C, C) Pearson correlation between FC weight row i and the mean penultimate features of class j."""
    classes = range(len(outputs.class_names))
    means = np.stack([outputs.penultimate[outputs.labels == c].mean(0) if (outputs.labels == c).any()
                      else np.full(outputs.penultimate.shape[1], np.nan) for c in classes])
    out = np.full((len(classes), len(classes)), np.nan)
    for i in classes:
        for j in classes:
            w, m = outputs.head_weight[i], means[j]
            if np.isfinite(m).all() and w.std() > 0 and m.std() > 0:
                out[i, j] = float(np.corrcoef(w, m)[0, 1])
    return out


def epochs_to_converge(val_loss: list[float], tolerance: float = 0.01) -> int:
    """First epoch (1-based) whose validation loss is within ``tolerance`` (relative) of the minimum."""
    best = min(val_loss)
    for i, v in enumerate(val_loss, start=1):
        if v <= best * (1 + tolerance) + 1e-12:
            return i
    return len(val_loss)


def case_name(strategy: str, strategy_params: dict[str, Any]) -> str:
    """A case: a strategy with its own parameters ("linear_probe", "freeze_to k=5"), whatever the learning
    rate and other settings. ``strategy_params`` in the strategy's declared order."""
    return " ".join([strategy, *(f"{p}={v}" for p, v in strategy_params.items())])


def best_per_case(s: StudyRecords) -> dict[str, dict]:
    """The best complete trial (by validation metric) of each case (``case_name``)."""
    own = {e.name: [p.name for p in e.obj.params] for e in plugins.strategies().entries()}

    def case(t: dict) -> str:
        strategy = t["params"].get("strategy", "?")
        return case_name(strategy, {p: t["params"][p] for p in own.get(strategy, []) if p in t["params"]})

    return best_per_group(s.trials, s.metric, case)


def close_figures(outputs: Iterable[Output]) -> None:
    """Close the figures of ``outputs`` (pyplot keeps every figure it made until it is closed)."""
    figures = [o.figure for o in outputs if o.figure is not None]
    if figures:
        plt = pyplot()
        for figure in figures:
            plt.close(figure)


def one_at_a_time(outputs: Iterable[Output]) -> Iterator[Output]:
    """``outputs`` one by one; when the consumer stops early (a full disk while logging them), the figures
    not handed out yet are closed, so a failed trial leaves none open."""
    pending = list(outputs)
    try:
        while pending:
            yield pending.pop(0)
    finally:
        close_figures(pending)


def trial_analyses(outputs: TrialOutputs) -> Iterator[Output]:
    """Every installed trial-scope analysis on one trial's outputs, run one analysis at a time as the outputs
    are consumed: a trial's figures are drawn, logged and closed analysis by analysis, not all held at once."""
    for entry in plugins.analyses().entries():
        if entry.obj.scope == "trial":
            yield from one_at_a_time(entry.obj.run(outputs))
