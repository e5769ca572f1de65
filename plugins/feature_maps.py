"""Feature-map views of trained trials (paper 004, Figs 8-10): Grad-CAM on chosen test images and the
deconvnet view of a few layers, per trial and for each case's best trial side by side, most frozen
left, most fine-tuned right.

The maps are computed when a trial is trained (the ``trial_trained`` lifecycle hook) and handed to
the trial analyses on ``TrialOutputs.saliency``: disable this plugin
(``FREEZEBENCH_DISABLE_PLUGINS=feature_maps``) and no trial pays for them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from freezebench import hookimpl
from freezebench.analysis import Output, StudyRecords, TrialOutputs, best_per_case, colour, pyplot, ranked



def comparable_cases(s: StudyRecords, artifact: str, at_most: int, *same: str) -> list[tuple[str, dict, dict]]:
    """(case, trial, arrays) for the best trial of up to ``at_most`` cases (the best first by validation
    metric) that logged ``artifact`` with the same ``same`` arrays as the first, sorted most frozen first."""
    best = best_per_case(s)
    cases = {t["run_id"]: case for case, t in best.items()}
    columns = []
    for t in ranked(best.values(), s.metric)[:at_most]:
        case = cases[t["run_id"]]
        arrays = s.arrays(t["run_id"], artifact)
        if arrays is not None:
            columns.append((case, t, arrays))
    if columns:
        reference = columns[0][2]
        columns = [c for c in columns if all(np.array_equal(c[2][k], reference[k]) for k in same)]
    return sorted(columns, key=lambda c: c[1]["metrics"].get("trainable_params", 0))


def _case_title(ax, case: str, t: dict) -> None:
    trainable = t["metrics"].get("trainable_params")
    ax.set_title(f"{case}\n{trainable / 1e6:.2f} M trainable" if trainable is not None else case, fontsize=8,
                 color=colour(t["params"].get("strategy", "")))


_RULE_NAMES = {"deconvnet": "Deconvnet", "guided": "Guided backpropagation"}


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _overlay(ax, image: np.ndarray, cam: np.ndarray) -> None:
    """The image in grey with its Grad-CAM map (upsampled to the image) in colour on top."""
    from .saliency import upsample  # torch: only when a figure is drawn

    ax.imshow(image.mean(-1) if image.shape[-1] == 3 and (image[..., 0] == image[..., 1]).all() else image,
              cmap="gray", vmin=0, vmax=255)
    ax.imshow(upsample(cam, image.shape[0]), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    _bare(ax)


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
            _bare(axes[0, j])
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


@dataclass(frozen=True)
class GradCamComparison:
    name: str = "grad_cam_comparison"
    summary: str = "Grad-CAM of each case's best trial side by side, most frozen left, most fine-tuned right"
    scope: str = "study"
    max_cases: int = 6

    def run(self, s: StudyRecords) -> list[Output]:
        key = f"best_val_{s.metric}"
        columns = comparable_cases(s, "grad_cam.npz", self.max_cases, "indices")
        if len(columns) < 2:  # nothing to compare
            return []
        first = columns[0][2]
        reference = first["indices"]
        names = [str(x) for x in first["class_names"]]
        rows = len(reference)
        plt = pyplot()
        fig, axes = plt.subplots(rows, len(columns) + 1, figsize=(1.8 * (len(columns) + 1) + 0.6, 1.8 * rows + 0.9), squeeze=False)
        for i in range(rows):
            axes[i, 0].imshow(first["images"][i])
            _bare(axes[i, 0])
            axes[i, 0].set_ylabel(f"#{reference[i]} {names[first['labels'][i]]}", fontsize=8)
            for j, (case, t, maps) in enumerate(columns, start=1):
                _overlay(axes[i, j], maps["images"][i], maps["cams"][i])
                right = maps["predicted"][i] == maps["labels"][i]
                axes[i, j].set_xlabel(f"predicted {names[maps['predicted'][i]]}", fontsize=7, color="black" if right else "#d62728")
        axes[0, 0].set_title("test image", fontsize=8)
        for j, (case, t, _) in enumerate(columns, start=1):
            _case_title(axes[0, j], case, t)
        title = f"Grad-CAM, frozen to fine-tuned: {s.study}"
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        data = [{"case": case, "run": t["run_name"], "run_id": t["run_id"], f"val_{s.metric}": t["metrics"][key],
                 "trainable_params": t["metrics"].get("trainable_params"), "layer": str(maps["layer"])} for case, t, maps in columns]
        return [Output("grad_cam_comparison.png", figure=fig, title="Grad-CAM, frozen to fine-tuned"),
                Output("grad_cam_comparison.json", data=data)]


@dataclass(frozen=True)
class DeconvView:
    name: str = "deconv_view"
    summary: str = ("deconvnet view (Zeiler & Fergus; guided backpropagation for strided-conv nets) of up to 5 layers' "
                    "strongest feature map, first test image of each class")
    scope: str = "trial"

    def run(self, o: TrialOutputs) -> list[Output]:
        m = o.saliency
        if m is None or m.deconv is None or not len(m.deconv_layers):
            return []
        first = m.deconv_at
        layers, n = len(m.deconv_layers), len(first)
        plt = pyplot()
        height = 1.8 * (layers + 1) + 0.6
        fig, axes = plt.subplots(layers + 1, n, figsize=(1.9 * n + 1.2, height), squeeze=False)
        for j, i in enumerate(first):
            axes[0, j].imshow(m.images[i])
            axes[0, j].set_title(f"#{m.indices[i]} {o.class_names[m.labels[i]]}", fontsize=8)
            for r in range(layers):
                axes[r + 1, j].imshow(m.deconv[r, j], interpolation="nearest")  # pixel-exact, and a small PNG
                axes[r + 1, j].set_xlabel(f"channel {m.deconv_channels[r, j]}", fontsize=7)
        for ax in axes.flat:
            _bare(ax)
        axes[0, 0].set_ylabel("test image", fontsize=8)
        for r, unit in enumerate(m.deconv_layers):
            axes[r + 1, 0].set_ylabel(unit, fontsize=8)
        title = f"{_RULE_NAMES.get(m.deconv_rule, 'Deconvnet')} view per layer ({o.strategy})"
        fig.suptitle(title, fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / height))
        arrays = {"indices": m.indices[first], "images": m.images[first], "labels": m.labels[first], "views": m.deconv,
                  "channels": m.deconv_channels, "layers": np.array(m.deconv_layers), "rule": np.array(m.deconv_rule or "deconvnet"),
                  "class_names": np.array(o.class_names)}
        return [Output("deconv_view.png", figure=fig, title=title), Output("deconv_view.npz", arrays=arrays)]


@dataclass(frozen=True)
class DeconvComparison:
    name: str = "deconv_comparison"
    summary: str = "deconvnet view per layer of each case's best trial side by side, most frozen left (paper 004, Figs. 8-10)"
    scope: str = "study"
    max_cases: int = 6
    max_images: int = 2

    def run(self, s: StudyRecords) -> list[Output]:
        key = f"best_val_{s.metric}"
        columns = comparable_cases(s, "deconv_view.npz", self.max_cases, "indices", "layers", "rule")
        if len(columns) < 2:
            return []
        first = columns[0][2]
        names, layers = [str(x) for x in first["class_names"]], [str(x) for x in first["layers"]]
        images = min(self.max_images, len(first["indices"]))
        rows = [(i, r) for i in range(images) for r in range(len(layers))]
        plt = pyplot()
        height = 1.8 * len(rows) + 0.9
        fig, axes = plt.subplots(len(rows), len(columns) + 1, figsize=(1.8 * (len(columns) + 1) + 0.8, height), squeeze=False)
        for row, (i, r) in enumerate(rows):
            axes[row, 0].imshow(first["images"][i])
            axes[row, 0].set_ylabel(f"#{first['indices'][i]} {names[first['labels'][i]]}\n{layers[r]}", fontsize=8)
            for j, (case, t, arrays) in enumerate(columns, start=1):
                axes[row, j].imshow(arrays["views"][r, i], interpolation="nearest")
        for ax in axes.flat:
            _bare(ax)
        axes[0, 0].set_title("test image", fontsize=8)
        for j, (case, t, _) in enumerate(columns, start=1):
            _case_title(axes[0, j], case, t)
        view = _RULE_NAMES[str(first["rule"])]
        fig.suptitle(f"{view} view per layer, frozen to fine-tuned: {s.study}", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / height))
        data = [{"case": case, "run": t["run_name"], "run_id": t["run_id"], f"val_{s.metric}": t["metrics"][key],
                 "trainable_params": t["metrics"].get("trainable_params"), "layers": layers, "rule": str(first["rule"]),
                 "channels": arrays["channels"][:, :images].tolist()} for case, t, arrays in columns]
        return [Output("deconv_comparison.png", figure=fig, title=f"{view} view per layer, frozen to fine-tuned"),
                Output("deconv_comparison.json", data=data)]


@hookimpl
def trial_trained(trial):
    """Grad-CAM and the deconvnet view of the trained model on a few test images (analysed trials only)."""
    if not trial.inspect:
        return
    from .deconv import unit_layers  # torch: only when a trial is trained, not when plugins load
    from .saliency import saliency_maps

    trial.outputs.saliency = saliency_maps(
        trial.backbone.model, trial.test_images, trial.test_labels, trial.normalize, trial.compute,
        layers=unit_layers(trial.backbone.model, trial.backbone.units, trial.config.image_size))


@hookimpl
def register_analyses(register):
    for analysis in (GradCam(), GradCamComparison(), DeconvView(), DeconvComparison()):
        register(analysis)
