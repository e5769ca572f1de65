"""One trial: build the backbone, plan and apply the freeze, train, measure."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .analysis import TrialOutputs, collect_trial_outputs
from .backbone import Backbone, BackboneSpec, WeightsRequest, trainable_parameter_count
from .datacache import DataCache  # noqa: F401  (re-exported: trials share one)
from .dataset import ImageDataset
from .device import resolve_compute
from .errors import UserError
from .freeze import apply_plan, param_groups
from .preprocess import Normalizer
from .phases import PlanExecutor
from .prefix import CachedSuffix, cache_blocker, cut_point, decompose, prefix_features
from .strategy import FreezePlan, InvalidParams, Strategy  # noqa: F401  (InvalidParams: see resolve)
from .training import SplitTensors, TrainOutcome, make_optimizer, train
from .heads import with_head
from .deconv import unit_layers
from .saliency import saliency_maps
from .units import with_granularity


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
    granularity: str = "block"
    lr_decay: float = 1.0
    lr_schedule: str = "constant"
    lr_step: int = 10
    lr_gamma: float = 0.1
    select_epoch: str = "best"
    head: str = "linear"
    head_hidden: int = 256
    head_dropout: float = 0.5
    augment: str = "none"
    augment_copies: int = 4
    balance: str = "none"
    resize_mode: str = "stretch"
    cache: str = "auto"
    cache_dtype: str = "float32"
    cache_limit_mb: int = 2048
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
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
    events: list[dict] = field(default_factory=list)  # phases that unfroze units, per epoch
    prefix_cache: str = "off"  # what the frozen-prefix cache did, and why
    compute: str = "cpu"  # device, AMP and memory format the trial ran with
    class_names: tuple[str, ...] = ()
    outputs: "TrialOutputs | None" = None  # the trained model's test-set outputs, for analyses


def _cache_plan(cfg: TrialConfig, backbone: Backbone, plan: FreezePlan, data: dict[str, SplitTensors]):
    """(all steps, number of steps to cache, note); 0 steps when the trial trains the whole model."""
    if cfg.cache == "off":
        return [], 0, "off: cache = 'off'"
    blocker = cache_blocker(backbone, plan, online_augment=cfg.augment == "online")
    if blocker:  # no model decomposition (three forward passes) for trials that cannot cache
        return [], 0, f"off: {blocker}"
    decomposition = decompose(backbone, cfg.image_size)
    cut, why = cut_point(backbone, plan, decomposition, online_augment=cfg.augment == "online")
    steps = decomposition.steps
    if not cut:
        return steps, 0, f"off: {why}"
    with torch.no_grad():
        probe = Normalizer(backbone.mean, backbone.std)(data["train"].images[:1])
        for _, m in steps[:cut]:
            m.eval()
            probe = m(probe)
    per_image = probe.numel() * (2 if cfg.cache_dtype == "float16" else 4)
    if probe.numel() > data["train"].images[0].numel():  # more numbers than the image: the prefix is cheap, the features not
        return steps, 0, f"off: the features after {steps[cut - 1][0]} are larger than the images (no saving)"
    total = per_image * sum(len(t.labels) for t in data.values())
    if total > cfg.cache_limit_mb * 2**20:
        return steps, 0, (f"off: the features after {steps[cut - 1][0]} would take {total / 2**20:.0f} MB, "
                          f"over cache_limit_mb = {cfg.cache_limit_mb}")
    return steps, cut, f"on: {cut} steps up to {steps[cut - 1][0]}, features {tuple(probe.shape[1:])} {cfg.cache_dtype}"


def parse_window(value: Any, units: list[str], backbone: str) -> tuple[int, int]:
    """"A..B" (unit names or indices, inclusive) or "all" -> (start, end) with end exclusive."""
    if value == "all":
        return 0, len(units)
    if not isinstance(value, str) or ".." not in value:
        raise UserError(f"A window is a string \"A..B\" of unit names or indices (inclusive), or \"all\"; got {value!r}.")
    ends = []
    for part in value.split("..", 1):
        part = part.strip()
        if part.lstrip("-").isdigit():
            i = int(part)
            i = i + len(units) if i < 0 else i
        elif part in units:
            i = units.index(part)
        else:
            i = -1
        if not 0 <= i < len(units):
            raise UserError(f"Window {value!r}: backbone {backbone!r} has no unit {part!r}; its units are: {', '.join(units)}")
        ends.append(i)
    if ends[0] > ends[1]:
        raise UserError(f"Window {value!r}: {units[ends[0]]} comes after {units[ends[1]]} in backbone {backbone!r}.")
    return ends[0], ends[1] + 1


def resolve_strategy_params(strategy: Strategy, backbone: Backbone, params: dict[str, Any]) -> dict[str, Any]:
    """Check unit parameters against the backbone's units; turn windows into (start, end) pairs."""
    n, units, out = len(backbone.units), backbone.unit_names(), dict(params)
    for spec in strategy.params:
        if spec.name not in params:
            if spec.default is None:
                raise UserError(f"Strategy {strategy.name!r} needs parameter {spec.name!r} ({spec.help}).")
            out[spec.name] = spec.default
            continue
        value = params[spec.name]
        if spec.kind == "window":
            out[spec.name] = parse_window(value, units, backbone.name)
        elif spec.kind == "unit":
            if isinstance(value, int) and not isinstance(value, bool) and -n <= value < 0:
                value = out[spec.name] = value + n  # counted from the end
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= n:
                raise UserError(
                    f"Strategy {strategy.name!r}: {spec.name}={value!r} is outside 0..{n} for backbone "
                    f"{backbone.name!r}, whose {n} units are: {', '.join(units)}"
                )
            if spec.after and isinstance(out.get(spec.after), int) and value < out[spec.after]:
                raise InvalidParams(f"{spec.name}={value} is below {spec.after}={out[spec.after]}")
    return out


def build_and_plan(
    cfg: TrialConfig, num_classes: int, spec: BackboneSpec, weights: WeightsRequest, strategy: Strategy
) -> tuple[Backbone, FreezePlan]:
    request = WeightsRequest(weights.pretrained and strategy.pretrained, weights.file, weights.sha256)
    backbone = with_granularity(spec.build(num_classes, request), cfg.granularity)
    backbone = with_head(backbone, cfg.head, cfg.head_hidden, cfg.head_dropout)
    params = {**cfg.strategy_params, "head_lr_mult": cfg.head_lr_mult, "bn_policy": cfg.bn_policy}
    params = resolve_strategy_params(strategy, backbone, params)
    plan = strategy.plan(backbone.unit_names(), params)  # InvalidParams: this trial fails, the study goes on
    if cfg.lr_decay != 1.0:  # layer-wise LR decay: the unit nearest the head keeps the base LR
        units = backbone.unit_names()
        decayed = {u: plan.lr_mult.get(u, 1.0) * cfg.lr_decay ** (len(units) - 1 - i) for i, u in enumerate(units)}
        plan = dataclasses.replace(plan, lr_mult=decayed)
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
    compute = resolve_compute(cfg.device, cfg.amp, cfg.channels_last)
    copies = cfg.augment_copies if cfg.augment == "offline" else 0
    cache = cache or DataCache()
    data = cache.get(dataset, cfg.image_size, cfg.resize_mode, copies, cfg.seed)
    pixel_norm = norm = Normalizer(backbone.mean, backbone.std)
    model: nn.Module = backbone.model
    pixels = data  # the images, also after ``data`` becomes features
    steps, cut, note = _cache_plan(cfg, backbone, plan, data)  # on the host, before the move
    compute.model(backbone.model)  # before the optimizer and L2-SP references are made
    groups = param_groups(backbone, plan, cfg.lr, cfg.weight_decay)
    optimizer = make_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum)
    executor = PlanExecutor(backbone, plan, optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, epochs=cfg.epochs,
                            schedule=cfg.lr_schedule, step=cfg.lr_step, gamma=cfg.lr_gamma)
    if cut:
        prefix = steps[:cut]
        dtype = torch.float16 if cfg.cache_dtype == "float16" else torch.float32
        weights_key = backbone.weights_sha256 or f"random-seed{cfg.seed}"
        context = (backbone.name, weights_key, cfg.head, id(dataset), cfg.image_size, cfg.resize_mode, copies,
                   cfg.seed if copies else 0, cfg.cache_dtype, compute)
        names = tuple(n for n, _ in prefix)

        def compute_features():
            # start from a shallower freeze point's features when they are cached (float32 only: exact)
            start, base = cache.nearest(context, names) if dtype == torch.float32 else (0, None)
            source, first = (base, _as_float) if base is not None else (pixels, pixel_norm)
            return {s: SplitTensors(prefix_features(prefix[start:], t.images, first, dtype=dtype, compute=compute), t.labels)
                    for s, t in source.items()}

        data = cache.features((context, names), compute_features, cfg.cache_limit_mb * 2**20)
        model = CachedSuffix(steps[cut:])
        norm = _as_float
    outcome = train(
        model,
        optimizer,
        data["train"],
        data["val"],
        data["test"],
        norm,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        metric=cfg.metric,
        on_epoch=on_epoch,
        executor=executor,
        select=cfg.select_epoch,
        augment=cfg.augment == "online",
        balance=cfg.balance,
        compute=compute,
    )
    outputs = collect_trial_outputs(model, backbone.model.get_submodule(backbone.head.name), data["test"].images,
                                    data["test"].labels, norm, cfg.strategy, dataset.classes, cfg.batch_size, compute)
    outputs.saliency = saliency_maps(backbone.model, pixels["test"].images, pixels["test"].labels, pixel_norm, compute,
                                     layers=unit_layers(backbone.model, backbone.units, cfg.image_size))
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
        events=executor.events,
        prefix_cache=note,
        compute=compute.describe(),
        class_names=tuple(dataset.classes),
        outputs=outputs,
    )


def _as_float(features: torch.Tensor) -> torch.Tensor:
    return features.float()


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
