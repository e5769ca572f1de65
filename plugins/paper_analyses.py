"""The papers' analyses as plugins: output scores and FC weights per class (paper 000, Figs 2-3),
weights-to-class correlation (paper 001), metric vs freeze point per LR (paper 002, Figs 6-7),
validation-loss curves with epochs to converge, and Grad-CAM feature maps per trial and frozen vs
fine-tuned side by side (paper 004)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from freezebench.analysis import Output, StudyRecords, TrialOutputs, colour, epochs_to_converge, weight_class_correlation
from freezebench.figures import pyplot
from freezebench.saliency import upsample
from freezebench.hookspecs import hookimpl


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
    summary: str = "test and validation metric against the freeze point k, one line per learning rate (freeze_to trials)"
    scope: str = "study"

    def run(self, s: StudyRecords) -> list[Output]:
        points: dict[float, list[tuple[int, float, float]]] = {}
        for t in s.trials:
            p, m = t["params"], t["metrics"]
            if t["state"] != "complete" or p.get("strategy") != "freeze_to" or "k" not in p:
                continue
            points.setdefault(float(p["lr"]), []).append((int(p["k"]), m.get(f"test_{s.metric}", np.nan), m.get(f"best_val_{s.metric}", np.nan)))
        if not points:
            return []
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        for lr, pts in sorted(points.items()):
            pts.sort()
            line, = ax.plot([k for k, _, _ in pts], [v for _, v, _ in pts], marker="o", label=f"lr {lr:.2g} (test)")
            ax.plot([k for k, _, _ in pts], [v for _, _, v in pts], linestyle="--", color=line.get_color(), alpha=0.6, label=f"lr {lr:.2g} (val)")
        ax.set(xlabel="freeze point k (units frozen from the input)", ylabel=s.metric, title=f"{s.metric} vs freeze point: {s.study}")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        data = {f"{lr:g}": [{"k": k, f"test_{s.metric}": t, f"val_{s.metric}": v} for k, t, v in pts] for lr, pts in points.items()}
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


def _overlay(ax, image: np.ndarray, cam: np.ndarray) -> None:
    """The image in grey with its Grad-CAM map (upsampled to the image) in colour on top."""
    ax.imshow(image.mean(-1) if image.shape[-1] == 3 and (image[..., 0] == image[..., 1]).all() else image,
              cmap="gray", vmin=0, vmax=255)
    ax.imshow(upsample(cam, image.shape[0]), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


@dataclass(frozen=True)
class GradCam:
    name: str = "grad_cam"
    summary: str = "Grad-CAM feature maps for the true class on chosen test images (the first 2 of each class)"
    scope: str = "trial"

    def run(self, o: TrialOutputs) -> list[Output]:
        m = o.saliency
        if m is None or not len(m.indices):
            return []
        plt = pyplot()
        n = len(m.indices)
        fig, axes = plt.subplots(2, n, figsize=(1.9 * n + 0.4, 4.3), squeeze=False)
        for j in range(n):
            axes[0, j].imshow(m.images[j])
            axes[0, j].set_xticks([])
            axes[0, j].set_yticks([])
            axes[0, j].set_title(f"#{m.indices[j]} true {o.class_names[m.labels[j]]}", fontsize=8)
            _overlay(axes[1, j], m.images[j], m.cams[j])
            axes[1, j].set_title(f"predicted {o.class_names[m.predicted[j]]}", fontsize=8,
                                 color="black" if m.predicted[j] == m.labels[j] else "#d62728")
        axes[0, 0].set_ylabel("test image")
        axes[1, 0].set_ylabel("Grad-CAM")
        title = f"Grad-CAM at {m.layer} ({o.strategy})"
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        arrays = {"indices": m.indices, "images": m.images, "labels": m.labels, "predicted": m.predicted, "cams": m.cams,
                  "layer": np.array(m.layer), "class_names": np.array(o.class_names)}
        return [Output("grad_cam.png", figure=fig, title=title), Output("grad_cam.npz", arrays=arrays)]


def best_per_case(s: StudyRecords) -> dict[str, dict]:
    """The best complete trial (by validation metric) of each case: a strategy with its own parameters
    ("linear_probe", "freeze_to k=5"), whatever the learning rate and other settings."""
    from freezebench import registry

    own = {e.name: [p.name for p in e.obj.params] for e in registry.strategies().entries()}
    key = f"best_val_{s.metric}"
    best: dict[str, dict] = {}
    for t in s.trials:
        if t["state"] != "complete" or key not in t["metrics"]:
            continue
        strategy = t["params"].get("strategy", "?")
        case = " ".join([strategy, *(f"{p}={t['params'][p]}" for p in own.get(strategy, []) if p in t["params"])])
        if case not in best or t["metrics"][key] > best[case]["metrics"][key]:
            best[case] = t
    return best


@dataclass(frozen=True)
class GradCamComparison:
    name: str = "grad_cam_comparison"
    summary: str = "Grad-CAM of each case's best trial side by side, most frozen left, most fine-tuned right"
    scope: str = "study"
    max_cases: int = 6

    def run(self, s: StudyRecords) -> list[Output]:
        key = f"best_val_{s.metric}"
        chosen = sorted(best_per_case(s).items(), key=lambda kv: -kv[1]["metrics"][key])[: self.max_cases]
        columns = []
        for case, t in chosen:
            maps = s.arrays(t["run_id"], "grad_cam.npz")
            if maps is not None:
                columns.append((case, t, maps))
        if len(columns) < 2:  # nothing to compare
            return []
        reference = columns[0][2]["indices"]
        columns = [c for c in columns if np.array_equal(c[2]["indices"], reference)]
        columns.sort(key=lambda c: c[1]["metrics"].get("trainable_params", 0))  # most frozen first
        first = columns[0][2]
        names = [str(x) for x in first["class_names"]]
        rows = len(reference)
        plt = pyplot()
        fig, axes = plt.subplots(rows, len(columns) + 1, figsize=(1.8 * (len(columns) + 1) + 0.6, 1.8 * rows + 0.9), squeeze=False)
        for i in range(rows):
            axes[i, 0].imshow(first["images"][i])
            axes[i, 0].set_xticks([])
            axes[i, 0].set_yticks([])
            axes[i, 0].set_ylabel(f"#{reference[i]} {names[first['labels'][i]]}", fontsize=8)
            for j, (case, t, maps) in enumerate(columns, start=1):
                _overlay(axes[i, j], maps["images"][i], maps["cams"][i])
                right = maps["predicted"][i] == maps["labels"][i]
                axes[i, j].set_xlabel(f"predicted {names[maps['predicted'][i]]}", fontsize=7, color="black" if right else "#d62728")
        axes[0, 0].set_title("test image", fontsize=8)
        for j, (case, t, _) in enumerate(columns, start=1):
            trainable = t["metrics"].get("trainable_params")
            axes[0, j].set_title(f"{case}\n{trainable / 1e6:.2f} M trainable" if trainable is not None else case, fontsize=8,
                                 color=colour(t["params"].get("strategy", "")))
        title = f"Grad-CAM, frozen to fine-tuned: {s.study}"
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        data = [{"case": case, "run": t["run_name"], "run_id": t["run_id"], f"val_{s.metric}": t["metrics"][key],
                 "trainable_params": t["metrics"].get("trainable_params"), "layer": str(maps["layer"])} for case, t, maps in columns]
        return [Output("grad_cam_comparison.png", figure=fig, title="Grad-CAM, frozen to fine-tuned"),
                Output("grad_cam_comparison.json", data=data)]


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
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5.6, 4.6))
        strategies = [t["params"].get("strategy", "") for _, t, *_ in curves]
        distinct = len(set(strategies)) == len(strategies)
        palette = plt.get_cmap("viridis")
        for i, (case, t, fpr, tpr, area) in enumerate(curves):
            ax.plot(fpr, tpr, color=colour(strategies[i]) if distinct else palette(i / max(len(curves) - 1, 1)),
                    label=f"{case} (AUC {area:.3f})")
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        kind = "positive class" if binary else "micro-average"
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"Test ROC per case ({kind})\n{s.study}")
        ax.legend(loc="lower right", fontsize=7)
        fig.tight_layout()
        data = [{"case": case, "run": t["run_name"], "auc": area, "test_auc_recorded": t["metrics"].get("test_auc")}
                for case, t, _, _, area in curves]
        return [Output("roc_per_case.png", figure=fig, title="Test ROC per case"), Output("roc_per_case.json", data=data)]


@hookimpl
def register_analyses(register):
    for analysis in (OutputScores(), FcWeights(), WeightClassCorrelation(), GradCam(), MetricVsFreezePoint(), ValLossCurves(),
                     RocPerCase(), GradCamComparison()):
        register(analysis)
