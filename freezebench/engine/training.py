"""The training loop of one trial: epochs, validation each epoch, test at the best epoch."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..records import TrainOutcome, is_better
from .augment import augment_batch
from .device import CPU, Compute
from .metrics import classification_metrics
from .phases import PlanExecutor
from .preprocess import Normalizer


class DivergedError(RuntimeError):
    """Training produced a non-finite loss."""


@dataclass(frozen=True)
class SplitTensors:
    images: torch.Tensor  # uint8 (N, 3, S, S)
    labels: torch.Tensor  # int64 (N,)


def make_optimizer(name: str, groups: list[dict], lr: float, momentum: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', not {name!r}")


@torch.no_grad()
def predict(model: nn.Module, data: SplitTensors, norm, batch_size: int, compute: Compute = CPU) -> tuple[np.ndarray, float]:
    """Class probabilities (N, C) and the mean cross-entropy loss."""
    model.eval()
    probs, losses = [], []
    for start in range(0, len(data.labels), batch_size):
        x = compute.layout(norm(compute.batch(data.images[start : start + batch_size])))
        with compute.autocast():
            logits = model(x).float()
        losses.append(F.cross_entropy(logits, compute.batch(data.labels[start : start + batch_size]), reduction="sum"))
        probs.append(torch.softmax(logits, dim=1))
    total = torch.stack(losses).cpu().double().sum().item()  # one device sync; float64 on the host (MPS has none)
    return torch.cat(probs).cpu().numpy().astype(np.float64), total / len(data.labels)


def evaluate(model: nn.Module, data: SplitTensors, norm: Normalizer, batch_size: int, compute: Compute = CPU) -> dict[str, float]:
    probs, loss = predict(model, data, norm, batch_size, compute)
    return classification_metrics(data.labels.numpy(), probs, loss)


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_data: SplitTensors,
    val_data: SplitTensors,
    test_data: SplitTensors,
    norm: Normalizer,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    metric: str,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    executor: PlanExecutor | None = None,
    select: str = "best",
    augment: bool = False,
    balance: str = "none",
    compute: Compute = CPU,
    recut: Callable[[int], tuple | None] | None = None,
    whole: nn.Module | None = None,
) -> TrainOutcome:
    """Train for ``epochs``; keep the weights of the epoch with the best validation ``metric``
    (``select="best"``) or of the last epoch (``select="last"``) for the test.

    ``augment``: a fresh random augmentation of every training batch (online). ``balance``:
    "loss" weights the loss by inverse class frequency, "sampler" draws training images with
    inverse-frequency probabilities (with replacement), "none" does neither.

    ``recut(epoch)``, asked after each epoch, may switch training to a cached prefix's features: it
    returns (model, train, val, test, norm) to use from the next epoch on, or None. ``whole``: the
    network whose weights are kept at the selected epoch (``model`` by default; the whole network when
    ``model`` is the suffix after a cached prefix, so a switch cannot lose them).
    """
    whole = model if whole is None else whole
    generator = torch.Generator().manual_seed(seed)
    outcome = TrainOutcome()
    best_state = None
    best_score = None
    start = time.perf_counter()
    n = len(train_data.labels)
    counts = torch.bincount(train_data.labels).float().clamp(min=1)
    inverse = counts.sum() / (len(counts) * counts)  # 1 for a balanced dataset
    class_weight = inverse.to(compute.device) if balance == "loss" else None
    scaler = compute.scaler()
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        if executor is not None:
            executor.begin_epoch(epoch)
        model.train()
        if balance == "sampler":
            order = torch.multinomial(inverse[train_data.labels], n, replacement=True, generator=generator)
        else:
            order = torch.randperm(n, generator=generator)
        seen, loss_sum = 0, 0.0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2 and n >= 2:  # BatchNorm cannot train on a single image
                continue
            batch = train_data.images[idx]
            if augment:
                batch = augment_batch(batch, generator)
            x, y = compute.layout(norm(compute.batch(batch))), compute.batch(train_data.labels[idx])
            with compute.autocast():
                loss = F.cross_entropy(model(x).float(), y, weight=class_weight)
            value = loss.item()
            if not math.isfinite(value):
                raise DivergedError(f"non-finite training loss ({value}) in epoch {epoch}")
            penalty = executor.penalty() if executor is not None else None
            total = loss if penalty is None else loss + penalty
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                total.backward()
                if executor is not None:
                    executor.after_backward()
                optimizer.step()
            else:  # float16: scale the loss so small gradients do not underflow
                scaler.scale(total).backward()
                if executor is not None:
                    executor.after_backward()  # (gradient norms in the scaled units: ratios are unchanged)
                scaler.step(optimizer)
                scaler.update()
            loss_sum += value * len(idx)
            seen += len(idx)
        val = evaluate(model, val_data, norm, batch_size, compute)
        if not math.isfinite(val["loss"]):
            raise DivergedError(f"non-finite validation loss in epoch {epoch}")
        record = {"train_loss": loss_sum / max(seen, 1), **{f"val_{k}": v for k, v in val.items()},
                  "epoch_seconds": time.perf_counter() - epoch_start}
        if executor is not None:
            executor.end_epoch(epoch, record)  # an adaptive plan decides what trains from the next epoch on
        outcome.history.append(record)
        if (select == "last" and epoch == epochs) or (select == "best" and is_better(metric, val[metric], best_score)):
            best_score = val[metric]
            outcome.best_epoch, outcome.best_val = epoch, val
            best_state = {k: v.detach().clone() for k, v in whole.state_dict().items()}
        if on_epoch is not None:
            on_epoch(epoch, record)
        switched = recut(epoch) if recut is not None else None
        if switched is not None:  # a prefix frozen for good: its features from now on (labels and order unchanged)
            model, train_data, val_data, test_data, norm = switched
    outcome.train_seconds = time.perf_counter() - start
    if best_state is None:  # the metric was never defined (e.g. AUC with one class in val)
        outcome.best_epoch, outcome.best_val = epochs, val
    else:
        whole.load_state_dict(best_state)
    probs, loss = predict(model, test_data, norm, batch_size, compute)
    outcome.test_probs, outcome.test_labels = probs, test_data.labels.numpy()
    outcome.test = classification_metrics(outcome.test_labels, probs, loss)
    return outcome
