"""The answer to "what should I freeze, at what learning rate?" for one study, with its uncertainty:
the first row of the study's leaderboard (confirmed over seeds when the suite confirms), its test
metrics with 95% intervals, and paired comparisons on the same test images with the reference
strategies (linear probing, full fine-tuning), each at its own best configuration: the best row of the
reference strategy itself or of a plan that amounts to it (``freeze_to k=0`` is full fine-tuning)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..strategy import REFERENCES
from . import layout, stats
from .evidence import Predictions
from .leaderboard import leaderboard
from .tracking import Tracker


@dataclass
class Recommendation:
    study: str
    dataset: str
    backbone: str
    metric: str
    best: dict  # the study's first leaderboard row (run_id, strategy, strategy_params, lr, ..., frozen, seeds)
    n_test: int = 0
    n_val: int | None = None  # validation images of the study's split (None: not recorded)
    intervals: dict[str, stats.Interval] = field(default_factory=dict)
    comparisons: dict[str, stats.Comparison] = field(default_factory=dict)  # reference strategy -> best minus it
    references: dict[str, dict] = field(default_factory=dict)  # reference strategy -> its best row
    missing: dict[str, str] = field(default_factory=dict)  # reference strategy -> why it is not compared
    better: list[dict] = field(default_factory=list)  # leaderboard rows significantly better on test (vs_first)
    ensemble: dict[str, stats.Interval] = field(default_factory=dict)  # its kept seed models, probabilities averaged
    # reference strategy -> the ensemble minus the reference's seeds averaged likewise (both as delivered)
    ensemble_comparisons: dict[str, stats.Comparison] = field(default_factory=dict)

    @property
    def ensemble_run_ids(self) -> list[str]:
        """The runs whose kept models make the recommended configuration's ensemble (two or more seeds), else []."""
        ids = self.best.get("model_run_ids") or []
        return ids if len(ids) > 1 and self.ensemble else []

    @property
    def degenerate(self) -> bool:
        return bool(self.best.get("degenerate"))

    @property
    def model_run_id(self) -> str | None:
        """The run that kept the recommended configuration's trained model (its search trial, or a re-run)."""
        return self.best.get("model_run_id")

    def lines(self) -> list[str]:
        b = self.best
        what = _what(b)
        frozen = b["frozen"]
        frozen_text = "nothing frozen" if not frozen else (f"frozen: {frozen[0]}" if len(frozen) == 1 else
                                                          f"frozen: {frozen[0]} .. {frozen[-1]} ({len(frozen)} units)")
        val = b[f"val_{self.metric}"]
        chosen = (f"chosen on mean validation {self.metric} {val:.3f} ±{b[f'val_{self.metric}_std']:.3f} over {b['seeds']} seeds"
                  if b.get("confirmed") else f"chosen on validation {self.metric} {val:.3f} (one seed: not confirmed)")
        if self.n_val is not None:
            chosen += f", on {self.n_val} validation images"
        fold = layout.fold_of(self.study)
        where = f"{self.dataset} x {self.backbone}" + (f", fold {fold[1]}" if fold else "")
        out = [f"Recommended for {where}: {what} ({frozen_text}), lr {b['lr']:.2g}, "
               f"head LR x{b['head_lr_mult']:g}, BN {b['bn_policy']}; {chosen}."]
        if not self.intervals:
            out.append("  (no test predictions recorded for it: no intervals)")
            return out
        shown = ", ".join(f"{name.replace('_', ' ')} {self.intervals[name]}" for name in ("auc", "accuracy", "balanced_accuracy")
                          if name in self.intervals)
        seeds = f", mean of {b['seeds']} seeds" if b.get("confirmed") else ""
        out.append(f"  Test, {self.n_test} images{seeds}, 95% CI: {shown}."
                   + (" It predicts one class for every test image." if self.degenerate else ""))
        if self.ensemble:
            shown = ", ".join(f"{name.replace('_', ' ')} {self.ensemble[name]}" for name in ("auc", "accuracy", "balanced_accuracy")
                              if name in self.ensemble)
            out.append(f"  Its {len(self.ensemble_run_ids)} seeds' models as one ensemble (class probabilities averaged; "
                       f"what freezebench export writes), 95% CI: {shown}.")
        for ref, c in self.comparisons.items():
            r = self.references[ref]
            seeds = f", {r['seeds']} seeds" if r.get("confirmed") else ""
            stand_in = "" if r["strategy"] == ref else f"as {_what(r)}, "
            out.append(f"  vs {ref} ({stand_in}lr {r['lr']:.2g}{seeds}): {_compared(c)}")
            if (e := self.ensemble_comparisons.get(ref)) is not None:
                out.append(f"    vs {ref} as ensembles (its {r['seeds']} seeds averaged likewise): {_compared(e)}")
        for ref, why in self.missing.items():
            out.append(f"  vs {ref}: no comparison, {why}.")
        if self.better:
            r = max(self.better, key=lambda r: r["vs_first_auc"])
            lo, hi = r["vs_first_auc_ci"]
            out.append(f"  Caution: {len(self.better)} configuration(s) tested significantly better on these images, "
                       f"e.g. {_what(r)} lr {r['lr']:.2g} (AUC {r['vs_first_auc']:+.3f} [{lo:+.3f}, {hi:+.3f}], "
                       f"{_p(r['vs_first_p'])}, Holm): the validation images did not single out the best; "
                       "more validation data or confirm = { resplit = true } may (rows marked 'better').")
        probe = self.comparisons.get("linear_probe")
        if b.get("amounts_to") == "linear_probe":
            out.append("  Linear probing itself is the best configuration found"
                       + ("." if b["strategy"] == "linear_probe" else f" ({_what(b)} freezes every unit)."))
        elif probe is not None and not (probe.significant and probe.difference.value > 0):
            as_ensembles = self.ensemble_comparisons.get("linear_probe")
            if as_ensembles is not None and as_ensembles.significant and as_ensembles.difference.value > 0:
                out.append(f"  As single models nothing here beats linear probing significantly on these {self.n_test} "
                           "test images; as ensembles the recommendation does (see docs/reading-results.md).")
            else:
                out.append(f"  Nothing here beats linear probing significantly on these {self.n_test} test images: "
                           "that is a finding too (see docs/reading-results.md).")
        return out


    def as_dict(self) -> dict:
        """The recommendation for scripts (``freezebench recommend --json``): the configuration, how it was
        chosen, its test intervals, each reference comparison or why there is none, and its lines as text."""
        b, metric = self.best, self.metric
        return {
            "study": self.study, "dataset": self.dataset, "backbone": self.backbone,
            "configuration": {k: b.get(k) for k in CONFIGURATION_KEYS},
            "chosen_on": {"metric": f"val_{metric}", "images": self.n_val, "mean": b[f"val_{metric}"], "std": b.get(f"val_{metric}_std"),
                          "seeds": b.get("seeds", 1), "confirmed": bool(b.get("confirmed"))},
            "test": {"images": self.n_test, **{m: _interval(i) for m, i in self.intervals.items()}},
            "degenerate": self.degenerate,
            "model_run_id": self.model_run_id,
            "ensemble": {"members": self.ensemble_run_ids,
                         "test": {m: _interval(i) for m, i in self.ensemble.items()}} if self.ensemble else None,
            "references": {ref: {"strategy": r["strategy"], "strategy_params": r["strategy_params"], "lr": r["lr"],
                                 "seeds": r.get("seeds", 1), **_comparison(c),
                                 "as_ensembles": _comparison(self.ensemble_comparisons.get(ref))}
                           for ref, c in self.comparisons.items() for r in [self.references[ref]]},
            "not_compared": dict(self.missing),
            "better_on_test": [{"strategy": r["strategy"], "strategy_params": r["strategy_params"], "lr": r["lr"],
                                "auc_difference": {"value": r["vs_first_auc"], "low": r["vs_first_auc_ci"][0],
                                                   "high": r["vs_first_auc_ci"][1]}, "p_holm": r["vs_first_p"]}
                               for r in self.better],
            "text": self.lines(),
        }


# what a recommendation's configuration is made of (leaderboard row fields), for as_dict
CONFIGURATION_KEYS = ("strategy", "strategy_params", "params", "frozen", "amounts_to", "lr", "head_lr_mult", "bn_policy",
                      "optimizer", "epochs", "image_size", "run_id", "split_hash")


def _interval(i: stats.Interval) -> dict:
    return {"value": i.value, "low": i.low, "high": i.high}


def _comparison(c: stats.Comparison | None) -> dict | None:
    """A reference comparison for scripts: the AUC difference with its interval, Holm p, McNemar p."""
    if c is None:
        return None
    return {"auc_difference": _interval(c.difference), "p_holm": c.p_holm, "accuracy_mcnemar_p": c.accuracy_p,
            "significant": c.significant}


def _compared(c: stats.Comparison) -> str:
    """A reference comparison as text: the AUC difference with its interval, Holm p, McNemar p, the verdict."""
    verdict = ("AUC significantly higher" if c.significant and c.difference.value > 0 else
               "AUC significantly lower" if c.significant else "AUC not significantly different")
    return (f"AUC {c.difference.value:+.3f} [{c.difference.low:+.3f}, {c.difference.high:+.3f}], {_p(c.p_holm)} "
            f"(paired bootstrap, Holm); accuracy McNemar {_p(c.accuracy_p)}: {verdict}.")


def _what(row: dict) -> str:
    """A row's strategy and its own parameters: "freeze_to k=5", "linear_probe"."""
    return row["strategy"] + (f" {row['strategy_params']}" if row["strategy_params"] != "-" else "")


def is_reference(row: dict, ref: str) -> bool:
    """Whether a leaderboard row is the reference strategy ``ref``, by name or by what its plan amounts to."""
    return ref in (row["strategy"], row.get("amounts_to"))


def _p(value: float) -> str:
    """A p-value as the bootstrap can resolve it (2 / N_RESAMPLES at best)."""
    floor = 2 / stats.N_RESAMPLES
    return f"p < {floor:.2g}" if value < floor else f"p = {value:.2g}"


def _intervals(row: dict) -> dict[str, stats.Interval]:
    """The intervals a leaderboard row already holds (a confirmed row's only once its evidence is in)."""
    if not all(row.get(f"test_{m}_ci") for m in stats.INTERVAL_METRICS):
        return {}
    return {m: stats.Interval(row[f"test_{m}"], *row[f"test_{m}_ci"]) for m in stats.INTERVAL_METRICS}


def _validation_images(study_params: dict) -> int | None:
    """How many validation images the study chose on (its run's split counts); None when not recorded."""
    import ast

    try:
        return sum(ast.literal_eval(study_params[layout.SPLIT_COUNTS])["val"].values())
    except (KeyError, ValueError, SyntaxError, TypeError, AttributeError):  # none recorded, or no val split
        return None


def recommend(tracker: Tracker, experiment_id: str, study_run, metric: str, rows: list[dict] | None = None,
              predictions: Predictions | None = None) -> Recommendation | None:
    """The recommendation of the study whose MLflow run is ``study_run``, from what MLflow recorded; None when no
    trial finished. ``rows``: the dataset's leaderboard when the caller has it (with its evidence: the intervals
    are not computed again)."""
    client = tracker.client
    study = study_run.data.tags[layout.STUDY_NAME]
    dataset = client.get_experiment(experiment_id).name
    if rows is None:
        rows = leaderboard(tracker, dataset, metric, study=study, evidence=False)
    rows = [r for r in rows if r["study"] == study]
    if not rows:
        return None
    predictions = predictions or Predictions(client)
    best = rows[0]
    # vs_first compares with the dataset leaderboard's first row: it speaks for this study only when that row is its best
    better = [r for r in rows[1:] if r.get("vs_first") == "better"] if best.get("rank") == 1 else []
    rec = Recommendation(study, dataset, best["backbone"], metric, best, better=better,
                         n_val=_validation_images(study_run.data.params))
    mine = predictions.row(best)
    if mine is None:
        return rec
    labels, probs = mine
    rec.n_test, rec.intervals = len(labels), _intervals(best) or stats.intervals(labels, probs)
    delivered = _ensemble_probs(predictions, best.get("model_run_ids") or [], labels)  # what export writes, or None
    rec.ensemble = {} if delivered is None else stats.intervals(labels, delivered[None])
    comparisons, theirs = {}, {}
    for ref in REFERENCES:
        if is_reference(best, ref):
            continue  # the recommendation is this reference: nothing to compare
        candidate = next((r for r in rows if is_reference(r, ref)), None)
        if candidate is None:
            rec.missing[ref] = _why_missing(client, experiment_id, study, ref)
            continue
        other = predictions.row(candidate)
        if other is None or len(other[0]) != len(labels) or (other[0] != labels).any():
            rec.missing[ref] = "its best trial was not tested on the same images"
            continue  # not the same test images: no paired comparison
        comparisons[ref] = stats.compare(labels, probs, other[1], "auc")
        rec.references[ref], theirs[ref] = candidate, other[1]
    rec.comparisons = dict(zip(comparisons, stats.holm(list(comparisons.values()))))
    if delivered is not None:  # the delivered model against each reference's seeds averaged likewise
        together = {ref: stats.compare(labels, delivered, p.mean(axis=0), "auc") for ref, p in theirs.items() if len(p) > 1}
        rec.ensemble_comparisons = dict(zip(together, stats.holm(list(together.values()))))
    return rec


def _ensemble_probs(predictions: Predictions, run_ids: list[str], labels) -> np.ndarray | None:
    """The seed models' averaged probabilities on these test images, when two or more seeds kept their models
    and every one logged predictions on them (None otherwise): what the exported ensemble predicts."""
    probs = [got["probs"] for run_id in run_ids if (got := predictions.run(run_id)) is not None
             and got["labels"].shape == labels.shape and (got["labels"] == labels).all()]
    if len(probs) < 2 or len(probs) != len(run_ids):
        return None
    return np.mean(probs, axis=0)


def _why_missing(client, experiment_id: str, study: str, ref: str) -> str:
    """Why a study has no finished trial of reference ``ref``: not searched, or every trial of it stopped early
    (Hyperband prunes a reference as readily as any configuration)."""
    runs = client.search_runs([experiment_id], layout.where(layout.TRIAL, study=study, strategy=ref), max_results=1000)
    if not runs:
        return (f"{ref} was not searched (add it to the suite's strategies"
                + (", or freeze_to k=0" if ref == "full" else ", or freeze_to with every unit frozen") + ")")
    states: dict[str, int] = {}
    for r in runs:
        state = r.data.tags.get(layout.STATE, "running")
        states[state] = states.get(state, 0) + 1
    counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    return (f"none of its {len(runs)} trial(s) finished ({counts}); more n_trials, or a pruner that keeps it "
            "(pruner = \"none\"), would give one")


def recommendations(tracker: Tracker, dataset: str, metric: str, suite: str | None = None, rows: list[dict] | None = None,
                    predictions: Predictions | None = None) -> list[Recommendation]:
    """One per study of ``dataset`` (of ``suite``, when given). ``rows``, ``predictions``: see ``recommend``."""
    exp = tracker.client.get_experiment_by_name(dataset)
    if exp is None:
        return []
    parents = tracker.client.search_runs([exp.experiment_id], layout.where(layout.STUDY, suite=suite), max_results=1000)
    predictions = predictions or Predictions(tracker.client)
    out = []
    for parent in sorted(parents, key=lambda r: r.data.tags.get(layout.STUDY_NAME, "")):
        rec = recommend(tracker, exp.experiment_id, parent, metric, rows, predictions)
        if rec is not None:
            out.append(rec)
    return out
