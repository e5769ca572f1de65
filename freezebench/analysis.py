"""Analyses: views inside trained networks (per trial) and across a study's trials.

An analysis plugin registers objects with ``name``, ``summary``, ``scope`` ("trial" or "study")
and ``run(inputs) -> list[Output]``. Trial analyses get the trained model's test-set outputs
(``TrialOutputs``); study analyses get the study's trial records from MLflow (``StudyRecords``).
Each output is a figure (matplotlib) or data (JSON), saved as an MLflow artifact and shown in
``freezebench report``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .device import CPU, Compute
from .saliency import SaliencyMaps

STRATEGY_COLOURS = {  # one colour per strategy, in every figure
    "linear_probe": "#1f77b4", "full": "#d62728", "scratch": "#7f7f7f", "freeze_to": "#2ca02c",
    "train_window": "#9467bd", "train_range": "#8c564b", "last_blocks": "#e377c2",
    "gradual_unfreeze": "#bcbd22", "lp_ft": "#17becf", "bitfit": "#ff7f0e", "l2_sp": "#393b79",
}


def colour(strategy: str) -> str:
    if strategy in STRATEGY_COLOURS:
        return STRATEGY_COLOURS[strategy]
    import matplotlib

    palette = matplotlib.colormaps["tab20"].colors
    return matplotlib.colors.to_hex(palette[sum(map(ord, strategy)) % len(palette)])


@dataclass
class Output:
    name: str  # file name of the artifact: "*.png" for a figure, "*.json" for data, "*.npz" for arrays
    figure: Any = None
    data: Any = None
    title: str = ""
    arrays: dict[str, np.ndarray] | None = None


@dataclass
class TrialOutputs:
    """What a trained trial's model produced on the test set."""

    strategy: str
    class_names: tuple[str, ...]
    labels: np.ndarray  # (N,)
    logits: np.ndarray  # (N, C) final-layer scores
    penultimate: np.ndarray  # (N, D) the head's input features
    head_weight: np.ndarray  # (C, D) of the final linear layer
    head_bias: np.ndarray | None = None
    saliency: "SaliencyMaps | None" = None  # Grad-CAM on a few chosen test images


@dataclass
class StudyRecords:
    """A study's trials as MLflow recorded them."""

    study: str
    dataset: str
    metric: str
    class_names: tuple[str, ...] = ()
    trials: list[dict] = field(default_factory=list)  # {run_id, run_name, params, metrics, history, state}
    load_arrays: Any = None  # (run_id, artifact name) -> dict of arrays, or None when the trial has none

    def arrays(self, run_id: str, name: str) -> dict[str, np.ndarray] | None:
        return self.load_arrays(run_id, name) if self.load_arrays is not None else None


@torch.no_grad()
def collect_trial_outputs(model: torch.nn.Module, head: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                          norm, strategy: str, class_names, batch_size: int = 64, compute: Compute = CPU) -> TrialOutputs:
    """Run the trained model on the test set, catching the final linear layer's input."""
    final = head if isinstance(head, torch.nn.Linear) else [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    hook = final.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach().flatten(1).float().cpu()))
    model.eval()
    logits = []
    try:
        for start in range(0, len(labels), batch_size):
            batch = compute.layout(norm(compute.batch(images[start : start + batch_size])))
            with compute.autocast():
                logits.append(model(batch).float().cpu())
    finally:
        hook.remove()
    return TrialOutputs(
        strategy=strategy,
        class_names=tuple(class_names),
        labels=labels.numpy(),
        logits=torch.cat(logits).float().numpy(),
        penultimate=torch.cat(captured).float().numpy(),
        head_weight=final.weight.detach().float().cpu().numpy(),
        head_bias=None if final.bias is None else final.bias.detach().float().cpu().numpy(),
    )


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


def best_per_case(s: StudyRecords) -> dict[str, dict]:
    """The best complete trial (by validation metric) of each case: a strategy with its own parameters
    ("linear_probe", "freeze_to k=5"), whatever the learning rate and other settings."""
    from . import registry

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


def trial_analyses(outputs: TrialOutputs) -> list[Output]:
    """Run every installed trial-scope analysis on one trial's outputs."""
    from . import registry

    results: list[Output] = []
    for entry in registry.analyses().entries():
        if entry.obj.scope == "trial":
            results += entry.obj.run(outputs)
    return results
