"""A warm-started head (``head_init = "linear_probe"``): the new linear head starts as a logistic
regression fitted on the starting network's features, LP-FT's first stage (Kumar et al., ICLR 2022:
fine-tuning from a fitted head distorts the pretrained features less than from a random one).

The features are the head's inputs with the network in inference mode, before any training; the
regression is scikit-learn's (L2, lbfgs), fitted on the training split with its strength chosen on the
validation split's log-loss. Both depend only on the starting network and the data, so the trials of
a study that start from the same network share one fit (``DataCache.memo``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..backbone import Backbone
from .datacache import DataCache
from .device import Compute
from .training import SplitTensors

STRENGTHS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)  # inverse L2 strengths (scikit-learn's C), chosen on validation
# A feature whose spread over the training images is under this fraction of the typical feature's is left
# out of the regression: standardising it would turn a barely-seen activation (a ReLU that fired once,
# weakly) into a weight hundreds of times larger than the others, and one test image that fires it
# strongly into an extreme logit.
RARE_SPREAD = 1e-2


@dataclass(frozen=True)
class FittedHead:
    weight: np.ndarray  # (classes, features), on the raw features
    bias: np.ndarray  # (classes,)
    strength: float  # the chosen C
    val_loss: float  # its validation log-loss
    images: int  # training images it was fitted on

    def describe(self) -> str:
        if not np.isfinite(self.strength):
            return (f"linear probe: nothing to fit on {self.images} training images (one class, or no feature that "
                    "varies); the head starts at the training class frequencies")
        return (f"linear probe: logistic regression on the starting network's features of {self.images} training "
                f"images, C = {self.strength:g} (validation log-loss {self.val_loss:.3f})")


@torch.no_grad()
def head_inputs(backbone: Backbone, images: torch.Tensor, normalize, batch_size: int, compute: Compute) -> torch.Tensor:
    """What the head module receives for each image (N, features), the network in inference mode."""
    model, head = backbone.model, backbone.model.get_submodule(backbone.head.name)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach().float().cpu()))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            x = compute.layout(normalize(compute.batch(images[start : start + batch_size])))
            with compute.autocast():
                model(x)
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured).flatten(1)


def fit_head(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], classes: int,
             balanced: bool = False) -> FittedHead:
    """Logistic regression on standardised features, folded back into a linear layer on the raw ones.
    Features that barely vary over the training images (``RARE_SPREAD``) get weight 0."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    (x, y), (vx, vy) = train, val
    spread = x.std(0)
    keep = spread > RARE_SPREAD * (np.median(spread[spread > 0]) if (spread > 0).any() else 0.0)
    if not keep.any() or len(np.unique(y)) < 2:  # nothing to regress: the head starts at the class frequencies
        counts = np.bincount(y, minlength=classes)
        bias = np.where(counts > 0, np.log(np.maximum(counts, 1) / len(y)), -1e4)
        return FittedHead(np.zeros((classes, x.shape[1])), bias, float("nan"), float("nan"), len(y))
    scaler = StandardScaler().fit(x[:, keep])
    xs, vxs = scaler.transform(x[:, keep]), scaler.transform(vx[:, keep])
    labels = list(range(classes))
    best = None
    for c in STRENGTHS:
        fit = LogisticRegression(C=c, max_iter=2000, class_weight="balanced" if balanced else None).fit(xs, y)
        loss = log_loss(vy, fit.predict_proba(vxs), labels=labels) if len(vy) else float("nan")
        if best is None or loss < best[0]:
            best = (loss, c, fit)
    loss, c, fit = best
    coef, intercept = fit.coef_, fit.intercept_
    if coef.shape[0] == 1:  # binary: one logit z for class 1; as two logits -z/2, z/2 (the same softmax)
        coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
    full_w = np.zeros((classes, x.shape[1]))
    full_b = np.full(classes, -1e4)  # a class absent from training is never predicted at the start
    rows = np.asarray(fit.classes_)[:, None]
    full_w[rows, np.flatnonzero(keep)] = coef / scaler.scale_
    full_b[fit.classes_] = intercept - (coef * scaler.mean_ / scaler.scale_).sum(1)
    return FittedHead(full_w, full_b, c, float(loss), len(y))


def warm_start_head(backbone: Backbone, data: dict[str, SplitTensors], normalize, *, batch_size: int, compute: Compute,
                    balanced: bool, cache: DataCache, key: tuple) -> str:
    """Set the backbone's linear head to the linear probe of its starting network (shared through ``cache``
    under ``key``: the starting network and the data); what was done, for the trial's record."""
    head = backbone.model.get_submodule(backbone.head.name)
    if not isinstance(head, nn.Linear) or head.bias is None:
        raise ValueError(f"head_init = 'linear_probe' fits a linear head with a bias; {backbone.head.name} is {head}")

    def fit() -> FittedHead:
        feats = {s: head_inputs(backbone, data[s].images, normalize, batch_size, compute).numpy() for s in ("train", "val")}
        return fit_head((feats["train"], data["train"].labels.numpy()), (feats["val"], data["val"].labels.numpy()),
                        head.out_features, balanced)

    fitted = cache.memo(("head_init", key), fit)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(fitted.weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(fitted.bias, dtype=head.bias.dtype))
    return fitted.describe()
