"""The answer to "what should I freeze, at what learning rate?" for one study, with its uncertainty:
the configuration chosen on validation, its test metrics with 95% intervals, and paired comparisons
on the same test images with the reference strategies (linear probing, full fine-tuning)."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import layout, stats
from .tracking import Tracker, load_arrays

REFERENCES = ("linear_probe", "full")


@dataclass
class Recommendation:
    study: str
    dataset: str
    backbone: str
    metric: str
    best: dict  # the chosen trial: run_id, name, strategy, strategy_params, lr, head_lr_mult, bn_policy, frozen, val
    n_test: int = 0
    intervals: dict[str, stats.Interval] = field(default_factory=dict)
    comparisons: dict[str, stats.Comparison] = field(default_factory=dict)  # reference strategy -> best minus it
    references: dict[str, dict] = field(default_factory=dict)
    degenerate: bool = False

    def lines(self) -> list[str]:
        b = self.best
        what = b["strategy"] + (f" {b['strategy_params']}" if b["strategy_params"] != "-" else "")
        frozen = b["frozen"]
        frozen_text = "nothing frozen" if not frozen else (f"frozen: {frozen[0]}" if len(frozen) == 1 else
                                                          f"frozen: {frozen[0]} .. {frozen[-1]} ({len(frozen)} units)")
        out = [f"Recommended for {self.dataset} x {self.backbone}: {what} ({frozen_text}), lr {b['lr']:.2g}, "
               f"head LR x{b['head_lr_mult']:g}, BN {b['bn_policy']}; chosen on validation {self.metric} {b['val']:.3f}."]
        if not self.intervals:
            out.append("  (no test predictions recorded for it: no intervals)")
            return out
        shown = ", ".join(f"{name.replace('_', ' ')} {self.intervals[name]}" for name in ("auc", "accuracy", "balanced_accuracy")
                          if name in self.intervals)
        out.append(f"  Test, {self.n_test} images, 95% CI: {shown}."
                   + (" It predicts one class for every test image." if self.degenerate else ""))
        for ref, c in self.comparisons.items():
            r = self.references[ref]
            verdict = "AUC significantly higher" if c.significant and c.difference.value > 0 else (
                "AUC significantly lower" if c.significant else "AUC not significantly different")
            out.append(f"  vs {ref} (lr {r['lr']:.2g}): AUC {c.difference.value:+.3f} [{c.difference.low:+.3f}, "
                       f"{c.difference.high:+.3f}], {_p(c.p_holm)} (paired bootstrap, Holm); accuracy McNemar "
                       f"{_p(c.accuracy_p)}: {verdict}.")
        probe = self.comparisons.get("linear_probe")
        if b["strategy"] == "linear_probe":
            out.append("  Linear probing itself is the best configuration found.")
        elif probe is not None and not (probe.significant and probe.difference.value > 0):
            out.append(f"  Nothing here beats linear probing significantly on these {self.n_test} test images: "
                       "that is a finding too (see docs/reading-results.md).")
        return out


def _p(value: float) -> str:
    """A p-value as the bootstrap can resolve it (2 / N_RESAMPLES at best)."""
    floor = 2 / stats.N_RESAMPLES
    return f"p < {floor:.2g}" if value < floor else f"p = {value:.2g}"


def _trial(run) -> dict:
    m, p, t = run.data.metrics, run.data.params, run.data.tags
    frozen = t.get(layout.FROZEN_UNITS, "-")
    return {"run_id": run.info.run_id, "name": run.info.run_name, "strategy": p.get("strategy", "?"),
            "strategy_params": t.get(layout.STRATEGY_PARAMS, "-"), "lr": float(p.get("lr", "nan")),
            "head_lr_mult": float(p.get("head_lr_mult", "nan")), "bn_policy": p.get("bn_policy", "?"),
            "frozen": [] if frozen == "-" else frozen.split(","), "metrics": m}


def _logged_intervals(metrics: dict[str, float]) -> dict[str, stats.Interval]:
    """The intervals the trial recorded (runs from before intervals were recorded have none)."""
    names = [m for m in stats.INTERVAL_METRICS if layout.ci(m, "low") in metrics and f"test_{m}" in metrics]
    if len(names) < len(stats.INTERVAL_METRICS):
        return {}
    return {m: stats.Interval(metrics[f"test_{m}"], metrics[layout.ci(m, "low")], metrics[layout.ci(m, "high")]) for m in names}


def recommend(tracker: Tracker, experiment_id: str, study: str, metric: str) -> Recommendation | None:
    """The study's recommendation, from what MLflow recorded; None when no trial finished."""
    client = tracker.client
    runs = client.search_runs([experiment_id], layout.where(layout.TRIAL, finished=True, study=study), max_results=5000,
                              order_by=layout.ranked_by(metric))
    trials = [_trial(r) for r in runs if layout.best_val(metric) in r.data.metrics]
    if not trials:
        return None
    best = trials[0]
    best["val"] = best["metrics"][layout.best_val(metric)]
    tags = runs[0].data.tags
    rec = Recommendation(study, tags.get(layout.DATASET, ""), tags.get(layout.BACKBONE, ""), metric, best,
                         degenerate=tags.get(layout.DEGENERATE) == "true")
    predictions = load_arrays(client, best["run_id"], layout.TEST_PREDICTIONS)
    if predictions is None:
        return rec
    labels, probs = predictions["labels"], predictions["probs"]
    rec.n_test, rec.intervals = len(labels), _logged_intervals(best["metrics"]) or stats.intervals(labels, probs)
    comparisons = {}
    for ref in REFERENCES:
        candidate = next((t for t in trials if t["strategy"] == ref), None)
        if candidate is None or candidate is best:
            continue
        other = load_arrays(client, candidate["run_id"], layout.TEST_PREDICTIONS)
        if other is None or len(other["labels"]) != len(labels) or (other["labels"] != labels).any():
            continue  # not the same test images: no paired comparison
        comparisons[ref] = stats.compare(labels, probs, other["probs"], "auc")
        rec.references[ref] = candidate
    rec.comparisons = dict(zip(comparisons, stats.holm(list(comparisons.values()))))
    return rec


def recommendations(tracker: Tracker, dataset: str, metric: str, suite: str | None = None) -> list[Recommendation]:
    """One per study of ``dataset`` (of ``suite``, when given)."""
    exp = tracker.client.get_experiment_by_name(dataset)
    if exp is None:
        return []
    parents = tracker.client.search_runs([exp.experiment_id], layout.where(layout.STUDY, suite=suite), max_results=1000)
    out = []
    for parent in sorted(parents, key=lambda r: r.data.tags.get(layout.STUDY_NAME, "")):
        rec = recommend(tracker, exp.experiment_id, parent.data.tags[layout.STUDY_NAME], metric)
        if rec is not None:
            out.append(rec)
    return out
