"""Classification metrics (scikit-learn): accuracy, macro precision/recall/F1, ROC AUC, loss."""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn import metrics as skm




def classification_metrics(y_true: np.ndarray, probs: np.ndarray, loss: float) -> dict[str, float]:
    y_pred = probs.argmax(axis=1)
    labels = list(range(probs.shape[1]))
    precision, recall, f1, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    out = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "loss": float(loss),
    }
    out["auc"] = roc_auc(y_true, probs)
    return out


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Binary: AUC of the positive class; multi-class: macro one-vs-rest. NaN if a class is absent."""
    if len(np.unique(y_true)) < probs.shape[1] or not np.all(np.isfinite(probs)):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if probs.shape[1] == 2:
            return float(skm.roc_auc_score(y_true, probs[:, 1]))
        return float(skm.roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))
