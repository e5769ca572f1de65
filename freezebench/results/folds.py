"""Cross-validated results: a k-fold protocol runs one study per fold, each choosing its configuration
on its own validation split and testing it on its own held-out fold. Pooling each fold's chosen
configuration's test predictions gives every image of the dataset tested once, by a model that never
saw it: the cross-validated estimate of the whole procedure (search and selection included), with a
bootstrap interval over all those images, next to the per-fold values and which configuration won
each fold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import layout, stats
from .evidence import Predictions


@dataclass
class CrossValidated:
    study: str  # the studies' common name, without the fold
    picks: dict[int, dict] = field(default_factory=dict)  # fold -> its first leaderboard row
    n_test: int = 0
    pooled: dict[str, stats.Interval] = field(default_factory=dict)  # over every image, each tested once
    per_fold: dict[str, list[float]] = field(default_factory=dict)  # metric -> each fold's row's test value (mean of seeds)

    def lines(self) -> list[str]:
        folds = sorted(self.picks)
        out = [f"Cross-validated, {self.study} ({len(folds)} folds; each fold's configuration chosen on its own "
               f"validation split): {self.n_test} test images, each tested once."]
        if self.pooled:
            out.append("  Pooled over the folds (mean over seeds), 95% CI: "
                       + ", ".join(f"{m.replace('_', ' ')} {self.pooled[m]}" for m in ("auc", "accuracy", "balanced_accuracy")
                                   if m in self.pooled) + ".")
        for metric, values in self.per_fold.items():
            out.append(f"  {metric} per fold: " + ", ".join(f"{v:.3f}" for v in values)
                       + f" (mean {np.mean(values):.3f}, sd {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}).")
        chosen = {}
        for f in folds:
            r = self.picks[f]
            chosen.setdefault(f"{r['strategy']} {r['strategy_params']} lr {r['lr']:.2g}".replace(" - ", " "), []).append(f)
        out.append("  Chosen: " + "; ".join(f"{name} (fold{'s' if len(fs) > 1 else ''} {', '.join(map(str, fs))})"
                                            for name, fs in chosen.items()) + ".")
        return out


def cross_validated(rows: list[dict], predictions: Predictions) -> list[CrossValidated]:
    """One summary per group of fold studies found among leaderboard ``rows`` (ranked: a study's first row is
    its choice), for groups with at least two folds whose choices logged test predictions."""
    groups: dict[str, CrossValidated] = {}
    for r in rows:
        found = layout.fold_of(r.get("study", ""))
        if found is not None:
            groups.setdefault(found[0], CrossValidated(found[0])).picks.setdefault(found[1], r)
    out = []
    for cv in groups.values():
        got = [predictions.row(cv.picks[fold]) for fold in sorted(cv.picks)]
        if len(got) < 2 or any(g is None for g in got):
            continue
        seeds = min(g[1].shape[0] for g in got)  # seed i of every fold pooled together: the mean over seeds, as rows
        cv.n_test = sum(len(g[0]) for g in got)
        cv.pooled = stats.intervals(np.concatenate([g[0] for g in got]), np.concatenate([g[1][:seeds] for g in got], axis=1))
        cv.per_fold = {m: [cv.picks[f][f"test_{m}"] for f in sorted(cv.picks)] for m in ("auc", "accuracy")}
        out.append(cv)
    return out
