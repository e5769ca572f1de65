"""Per-trial test-set outputs: the confusion matrix and ROC curves (PNG + JSON), and the test
predictions behind them (labels and class probabilities), as analysis outputs to log with the trial."""

from __future__ import annotations

import numpy as np

from ..analysis import Output, pyplot
from . import layout

SECTION = "Test set"


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


def test_figures(labels: np.ndarray, probs: np.ndarray, class_names, figures: bool = True) -> list[Output]:
    """The test predictions and confusion matrix (always: the leaderboard's statistics read them), and with
    ``figures`` the confusion-matrix and ROC figures."""
    from sklearn.metrics import auc

    names = list(class_names) or [str(i) for i in range(probs.shape[1])]
    outputs = [Output(layout.TEST_PREDICTIONS, arrays={"labels": np.asarray(labels), "probs": np.asarray(probs, dtype=np.float64)})]
    matrix = confusion(labels, probs)
    outputs.append(Output("test_confusion_matrix.json", data={"classes": names, "matrix": matrix.tolist()}))
    if not figures:
        return outputs
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names,
           xlabel="predicted", ylabel="true", title="Test confusion matrix")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
    fig.tight_layout()
    outputs.append(Output("test_confusion_matrix.png", figure=fig, title="test confusion matrix", section=SECTION))
    curves = roc_curves(labels, probs)
    if curves:
        fig, ax = plt.subplots(figsize=(4.5, 4))
        for c, (fpr, tpr) in curves.items():
            ax.plot(fpr, tpr, label=f"{names[c]} (AUC {auc(fpr, tpr):.3f})")
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Test ROC")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        outputs.append(Output("test_roc.png", figure=fig, title="test ROC", section=SECTION))
    return outputs
