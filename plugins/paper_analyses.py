"""The papers' analyses as plugins: output scores and FC weights per class (paper 000, Figs 2-3),
weights-to-class correlation (paper 001), metric vs freeze point per LR (paper 002, Figs 6-7),
validation-loss curves with epochs to converge and the test ROC per case (paper 004). The feature-map
views are in ``feature_maps``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from freezebench import hookimpl
from freezebench.analysis import (Output, StudyRecords, TrialOutputs, best_per_case, colour, epochs_to_converge, pyplot,
                                  ranked, weight_class_correlation)

MAX_ROC_CURVES = 10  # more curves than this in one plot cannot be told apart


@dataclass(frozen=True)
class OutputScores:
    name: str = "output_scores"
    summary: str = "final-layer scores per test image by class (2 classes), else a 2D PCA of the penultimate features"
    scope: str = "trial"

    def run(self, o: TrialOutputs) -> list[Output]:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5, 4.2))
        if o.logits.shape[1] == 2:
            points, xlabel, ylabel = o.logits, f"score: {o.class_names[0]}", f"score: {o.class_names[1]}"
        else:
            centred = o.penultimate - o.penultimate.mean(0)
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            points, xlabel, ylabel = centred @ vt[:2].T, "PC 1 of penultimate features", "PC 2"
        markers = "os^Dv<>P*X"
        for c, name in enumerate(o.class_names):
            sel = o.labels == c
            ax.scatter(points[sel, 0], points[sel, 1], s=14, marker=markers[c % len(markers)], label=f"true {name}", alpha=0.75)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=f"Output scores by class ({o.strategy})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return [Output("output_scores.png", figure=fig, title=f"Output scores by class ({o.strategy})"),
                Output("output_scores.json", data={"classes": list(o.class_names), "labels": o.labels.tolist(),
                                                   "points": np.round(points, 6).tolist(), "axes": [xlabel, ylabel]})]


@dataclass(frozen=True)
class FcWeights:
    name: str = "fc_weights"
    summary: str = "the final FC layer's weights per class (weight dispersion)"
    scope: str = "trial"

    def run(self, o: TrialOutputs) -> list[Output]:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for c, name in enumerate(o.class_names):
            ax.plot(o.head_weight[c], linewidth=0.7, label=f"{name} (sd {o.head_weight[c].std():.3g})")
        ax.set(xlabel="input feature index", ylabel="weight", title=f"Final FC weights per class ({o.strategy})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        stats = {name: {"mean": float(o.head_weight[c].mean()), "std": float(o.head_weight[c].std()),
                        "min": float(o.head_weight[c].min()), "max": float(o.head_weight[c].max())}
                 for c, name in enumerate(o.class_names)}
        return [Output("fc_weights.png", figure=fig, title=f"Final FC weights per class ({o.strategy})"),
                Output("fc_weights.json", data=stats)]


@dataclass(frozen=True)
class WeightClassCorrelation:
    name: str = "weight_class_correlation"
    summary: str = "correlation of each class's FC weight row with the class-mean penultimate features"
    scope: str = "trial"

    def run(self, o: TrialOutputs) -> list[Output]:
        corr = weight_class_correlation(o)
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(4.6, 4))
        image = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
        names = list(o.class_names)
        ax.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names,
               xlabel="class-mean penultimate features of", ylabel="FC weight row of",
               title=f"Weights-to-class correlation ({o.strategy})")
        for (i, j), v in np.ndenumerate(corr):
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
        fig.colorbar(image, ax=ax, shrink=0.8)
        fig.tight_layout()
        return [Output("weight_class_correlation.png", figure=fig, title=f"Weights-to-class correlation ({o.strategy})"),
                Output("weight_class_correlation.json", data={"classes": names, "matrix": np.where(np.isnan(corr), None, corr).tolist()})]


@dataclass(frozen=True)
class MetricVsFreezePoint:
    name: str = "metric_vs_freeze_point"
    summary: str = ("test metric (with its 95% CI, shaded) and validation metric against the freeze point k, "
                    "one line per learning rate (freeze_to trials)")
    scope: str = "study"

    def run(self, s: StudyRecords) -> list[Output]:
        test, val = f"test_{s.metric}", f"val_{s.metric}"
        points: dict[float, list[dict]] = {}
        for t in s.trials:
            p, m = t["params"], t["metrics"]
            if t["state"] != "complete" or p.get("strategy") != "freeze_to" or "k" not in p:
                continue
            ci = s.test_interval(t["run_id"], s.metric)
            points.setdefault(float(p["lr"]), []).append({
                "k": int(p["k"]), "run": t["run_name"], test: m.get(test, np.nan), val: m.get(f"best_val_{s.metric}", np.nan),
                f"{test}_ci": [ci[1], ci[2]] if ci else None})
        if not points:
            return []
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for lr, pts in sorted(points.items()):
            pts.sort(key=lambda d: d["k"])
            ks = [d["k"] for d in pts]
            line, = ax.plot(ks, [d[test] for d in pts], marker="o", markersize=3, label=f"lr {lr:.2g} (test)")
            ax.plot(ks, [d[val] for d in pts], linestyle="--", color=line.get_color(), alpha=0.6, label=f"lr {lr:.2g} (val)")
            with_ci = [d for d in pts if d[f"{test}_ci"]]
            if with_ci:
                ax.fill_between([d["k"] for d in with_ci], [d[f"{test}_ci"][0] for d in with_ci],
                                [d[f"{test}_ci"][1] for d in with_ci], color=line.get_color(), alpha=0.12, linewidth=0)
        ax.set(xlabel="freeze point k (units frozen from the input)", ylabel=s.metric,
               title=f"{s.metric} vs freeze point (shaded: test 95% CI)\n{s.study}")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        data = {f"{lr:g}": pts for lr, pts in sorted(points.items())}
        return [Output("metric_vs_freeze_point.png", figure=fig, title=f"{s.metric} vs freeze point"),
                Output("metric_vs_freeze_point.json", data=data)]


@dataclass(frozen=True)
class ValLossCurves:
    name: str = "val_loss_curves"
    summary: str = "validation loss per epoch for each trial, coloured by strategy, with epochs to converge"
    scope: str = "study"

    def run(self, s: StudyRecords) -> list[Output]:
        curves = [t for t in s.trials if t.get("history", {}).get("val_loss")]
        if not curves:
            return []
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6.4, 4))
        seen = set()
        table = []
        for t in curves:
            loss = t["history"]["val_loss"]
            strategy = t["params"].get("strategy", "?")
            ax.plot(range(1, len(loss) + 1), loss, color=colour(strategy), alpha=0.7, linewidth=1,
                    label=strategy if strategy not in seen else None)
            seen.add(strategy)
            table.append({"run": t["run_name"], "strategy": strategy, "epochs_to_converge": epochs_to_converge(loss),
                          "min_val_loss": min(loss)})
        ax.set(xlabel="epoch", ylabel="validation loss", title=f"Validation loss per trial: {s.study}")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return [Output("val_loss_curves.png", figure=fig, title="Validation loss per trial"),
                Output("epochs_to_converge.json", data=table)]


@dataclass(frozen=True)
class RocPerCase:
    name: str = "roc_per_case"
    summary: str = "test-set ROC of each case's best trial in one plot (binary: the positive class; else micro-average)"
    scope: str = "study"

    def run(self, s: StudyRecords) -> list[Output]:
        from sklearn.metrics import auc, roc_curve

        curves, binary = [], True
        for case, t in sorted(best_per_case(s).items(), key=lambda kv: kv[1]["metrics"].get("trainable_params", 0)):
            pred = s.arrays(t["run_id"], "test_predictions.npz")
            if pred is None:
                continue
            labels, probs = pred["labels"], pred["probs"]
            binary &= probs.shape[1] == 2
            if probs.shape[1] == 2:
                y, score = labels == 1, probs[:, 1]
            else:  # micro-average: every (image, class) pair is one decision
                y, score = (labels[:, None] == np.arange(probs.shape[1])[None]).ravel(), probs.ravel()
            if y.all() or not y.any():
                continue
            fpr, tpr, _ = roc_curve(y, score)
            curves.append((case, t, fpr, tpr, float(auc(fpr, tpr))))
        if not curves:
            return []
        shown = curves
        if len(curves) > MAX_ROC_CURVES:  # a readable figure: the cases that validation ranks first (all in the JSON)
            best = {t["run_id"] for t in ranked([t for _, t, *_ in curves], s.metric)[:MAX_ROC_CURVES]}
            shown = [c for c in curves if c[1]["run_id"] in best]
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5.6, 4.6))
        strategies = [t["params"].get("strategy", "") for _, t, *_ in shown]
        distinct = len(set(strategies)) == len(strategies)
        palette = plt.get_cmap("viridis")
        for i, (case, t, fpr, tpr, area) in enumerate(shown):
            ax.plot(fpr, tpr, color=colour(strategies[i]) if distinct else palette(i / max(len(shown) - 1, 1)),
                    label=f"{case} (AUC {area:.3f})")
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        kind = "positive class" if binary else "micro-average"
        which = "" if shown is curves else f"the {len(shown)} of {len(curves)} cases best on validation {s.metric}\n"
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"Test ROC per case ({kind})\n{which}{s.study}")
        ax.legend(loc="lower right", fontsize=7)
        fig.tight_layout()
        data = [{"case": case, "run": t["run_name"], "auc": area, "test_auc_recorded": t["metrics"].get("test_auc")}
                for case, t, _, _, area in curves]
        return [Output("roc_per_case.png", figure=fig, title="Test ROC per case"), Output("roc_per_case.json", data=data)]


@hookimpl
def register_analyses(register):
    for analysis in (OutputScores(), FcWeights(), WeightClassCorrelation(), MetricVsFreezePoint(), ValLossCurves(), RocPerCase()):
        register(analysis)
