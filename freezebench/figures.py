"""Per-trial figures logged to MLflow: the test confusion matrix and ROC curves (PNG + JSON), and the
test predictions behind them (test_predictions.npz: labels and class probabilities)."""

from __future__ import annotations

import numpy as np


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, probs.argmax(1), labels=list(range(probs.shape[1])))


def roc_curves(labels: np.ndarray, probs: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """One-vs-rest ROC per class (binary: the positive class only); classes absent from labels skipped."""
    from sklearn.metrics import roc_curve

    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    out = {}
    for c in classes:
        y = labels == c
        if y.any() and (~y).any():
            fpr, tpr, _ = roc_curve(y, probs[:, c])
            out[c] = (fpr, tpr)
    return out


def log_test_figures(client, run_id: str, labels: np.ndarray, probs: np.ndarray, class_names) -> None:
    from sklearn.metrics import auc

    from .tracking import log_arrays

    names = list(class_names) or [str(i) for i in range(probs.shape[1])]
    log_arrays(client, run_id, {"labels": np.asarray(labels), "probs": np.asarray(probs, dtype=np.float64)}, "test_predictions.npz")
    matrix = confusion(labels, probs)
    client.log_dict(run_id, {"classes": names, "matrix": matrix.tolist()}, "test_confusion_matrix.json")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names,
           xlabel="predicted", ylabel="true", title="Test confusion matrix")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
    fig.tight_layout()
    client.log_figure(run_id, fig, "test_confusion_matrix.png")
    plt.close(fig)
    curves = roc_curves(labels, probs)
    if curves:
        fig, ax = plt.subplots(figsize=(4.5, 4))
        for c, (fpr, tpr) in curves.items():
            ax.plot(fpr, tpr, label=f"{names[c]} (AUC {auc(fpr, tpr):.3f})")
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Test ROC")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        client.log_figure(run_id, fig, "test_roc.png")
        plt.close(fig)
