"""One trial: build the backbone, plan and apply the freeze, train, measure."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from .backbone import Backbone, BackboneSpec, WeightsRequest, trainable_parameter_count
from .dataset import SPLITS, ImageDataset
from .errors import UserError
from .freeze import apply_plan, param_groups
from .preprocess import Normalizer, resize_images
from .strategy import FreezePlan, Strategy
from .training import SplitTensors, TrainOutcome, make_optimizer, train


@dataclass(frozen=True)
class TrialConfig:
    """The fully resolved configuration of one trial."""

    strategy: str
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    head_lr_mult: float = 10.0
    bn_policy: str = "eval"
    epochs: int = 3
    batch_size: int = 32
    image_size: int = 64
    seed: int = 0
    metric: str = "f1"
    strategy_params: dict[str, Any] = field(default_factory=dict)

    def as_flat_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("strategy_params"))
        return out


@dataclass
class TrialResult:
    config: TrialConfig
    plan: FreezePlan
    units: list[str]
    weights_source: str
    weights_sha256: str | None
    trainable_params: int
    total_params: int
    wall_seconds: float
    outcome: TrainOutcome


class DataCache:
    """Resized uint8 tensors per (dataset, image size), shared by the trials of a study."""

    def __init__(self):
        self._store: dict[tuple[int, int], dict[str, SplitTensors]] = {}

    def get(self, dataset: ImageDataset, size: int) -> dict[str, SplitTensors]:
        key = (id(dataset), size)
        if key not in self._store:
            images = resize_images(dataset.images, size)
            labels = torch.as_tensor(dataset.labels, dtype=torch.long)
            self._store[key] = {
                s: SplitTensors(images[idx], labels[idx])
                for s in SPLITS
                for idx in [torch.as_tensor(dataset.indices(s))]
            }
        return self._store[key]


def check_unit_params(strategy: Strategy, backbone: Backbone, params: dict[str, Any]) -> None:
    n = len(backbone.units)
    for spec in strategy.params:
        if spec.kind != "unit":
            continue
        if spec.name not in params:
            raise UserError(f"Strategy {strategy.name!r} needs parameter {spec.name!r} ({spec.help}).")
        k = params[spec.name]
        if not isinstance(k, int) or not 0 <= k <= n:
            raise UserError(
                f"Strategy {strategy.name!r}: {spec.name}={k!r} is outside 0..{n} for backbone "
                f"{backbone.name!r}, whose {n} units are: {', '.join(backbone.unit_names())}"
            )


def build_and_plan(
    cfg: TrialConfig, num_classes: int, spec: BackboneSpec, weights: WeightsRequest, strategy: Strategy
) -> tuple[Backbone, FreezePlan]:
    request = WeightsRequest(weights.pretrained and strategy.pretrained, weights.file, weights.sha256)
    backbone = spec.build(num_classes, request)
    params = {**cfg.strategy_params, "head_lr_mult": cfg.head_lr_mult, "bn_policy": cfg.bn_policy}
    check_unit_params(strategy, backbone, params)
    plan = strategy.plan(backbone.unit_names(), params)
    apply_plan(backbone, plan)
    return backbone, plan


def fit(
    cfg: TrialConfig,
    backbone: Backbone,
    plan: FreezePlan,
    dataset: ImageDataset,
    cache: DataCache | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    started: float | None = None,
) -> TrialResult:
    """Train a planned backbone on ``dataset`` and measure it."""
    start = time.perf_counter() if started is None else started
    groups = param_groups(backbone, plan, cfg.lr, cfg.weight_decay)
    optimizer = make_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum)
    data = (cache or DataCache()).get(dataset, cfg.image_size)
    outcome = train(
        backbone.model,
        optimizer,
        data["train"],
        data["val"],
        data["test"],
        Normalizer(backbone.mean, backbone.std),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        metric=cfg.metric,
        on_epoch=on_epoch,
    )
    return TrialResult(
        config=cfg,
        plan=plan,
        units=backbone.unit_names(),
        weights_source=backbone.weights_source,
        weights_sha256=backbone.weights_sha256,
        trainable_params=trainable_parameter_count(backbone.model),
        total_params=sum(p.numel() for p in backbone.model.parameters()),
        wall_seconds=time.perf_counter() - start,
        outcome=outcome,
    )


def run_trial(
    cfg: TrialConfig,
    dataset: ImageDataset,
    spec: BackboneSpec,
    weights: WeightsRequest,
    strategy: Strategy,
    cache: DataCache | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrialResult:
    """One whole trial: seed, build the backbone, plan and apply the freeze, train, measure."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    backbone, plan = build_and_plan(cfg, dataset.num_classes, spec, weights, strategy)
    return fit(cfg, backbone, plan, dataset, cache, on_epoch, started=start)
