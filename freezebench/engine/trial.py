"""One trial: build the backbone, plan and apply the freeze, train, measure."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..backbone import Backbone, BackboneSpec, WeightsRequest, trainable_parameter_count
from ..dataset import ImageDataset
from ..plugins import hook
from ..records import TrialConfig, TrialOutputs, TrialResult
from ..strategy import FreezePlan, Strategy, resolve_strategy_params
from .datacache import DataCache
from .device import Compute, resolve_compute
from .freeze import apply_plan, param_groups
from .heads import with_head
from .outputs import collect_trial_outputs
from .phases import PlanExecutor
from .prefix import (CachedSuffix, Decomposition, cache_blocker, cut_point, decompose, leading_cut, prefix_batch_size,
                     prefix_features)
from .preprocess import Normalizer
from .surgery import operate
from .training import SplitTensors, make_optimizer, train
from .units import with_granularity
from .warmstart import warm_start_head


@dataclass
class TrialState:
    """A trial as the lifecycle hooks see it (``freezebench.hookspecs``): what it trains and how.

    ``model`` is the module that trains: the whole backbone, or the suffix after a cached frozen
    prefix (``backbone.model`` is always the whole network). The test-set fields are set once
    the model is trained, for ``trial_trained``; so is ``inspect``: whether this trial's analyses
    run (the suite's ``analyses`` setting). Costly inspection in ``trial_trained`` runs only then.
    """

    config: TrialConfig
    backbone: Backbone
    plan: FreezePlan
    dataset: ImageDataset
    model: nn.Module
    optimizer: torch.optim.Optimizer
    compute: Compute
    history: list[dict[str, float]] = field(default_factory=list)
    outputs: TrialOutputs | None = None
    test_images: torch.Tensor | None = None  # uint8 (N, 3, S, S), before normalisation
    test_labels: torch.Tensor | None = None
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None
    inspect: bool = True


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


def build_and_plan(
    cfg: TrialConfig, num_classes: int, spec: BackboneSpec, weights: WeightsRequest, strategy: Strategy
) -> tuple[Backbone, FreezePlan]:
    request = WeightsRequest(weights.pretrained and strategy.pretrained, weights.file, weights.sha256)
    backbone = with_granularity(spec.build(num_classes, request), cfg.granularity)
    backbone = with_head(backbone, cfg.head, cfg.head_hidden, cfg.head_dropout)
    params = {**cfg.strategy_params, "head_lr_mult": cfg.head_lr_mult, "bn_policy": cfg.bn_policy}
    params = resolve_strategy_params(strategy, backbone.name, backbone.unit_names(), params)
    plan = strategy.plan(backbone.unit_names(), params)  # InvalidParams: this trial fails, the study goes on
    if cfg.lr_decay != 1.0:  # layer-wise LR decay: the unit nearest the head keeps the base LR
        units = backbone.unit_names()
        decayed = {u: plan.lr_mult.get(u, 1.0) * cfg.lr_decay ** (len(units) - 1 - i) for i, u in enumerate(units)}
        plan = dataclasses.replace(plan, lr_mult=decayed)
    backbone = operate(backbone, plan.surgery)  # wraps or adds modules; units follow their parameters
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
    inspect: Callable[[dict[str, float]], bool] | bool = True,
) -> TrialResult:
    """Train a planned backbone on ``dataset`` and measure it. ``inspect``: whether the trained model's
    analyses run, or a function of the selected epoch's validation metrics that says so."""
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
    if compute.cuda:
        torch.cuda.reset_peak_memory_stats(compute.device)
    weights_key = backbone.weights_sha256 or f"random-seed{cfg.seed}"
    context = (backbone.name, weights_key, cfg.head, id(dataset), cfg.image_size, cfg.resize_mode, copies,
               cfg.seed if copies else 0, cfg.cache_dtype, compute)
    head_init = ""
    if cfg.head_init == "linear_probe":  # the same starting network (surgery included) and data share one fit
        start_key = (context, repr(backbone.model), cfg.balance, cfg.seed if plan.surgery is not None else 0)
        head_init = warm_start_head(backbone, pixels, pixel_norm, batch_size=prefix_batch_size(cfg.image_size),
                                    compute=compute, balanced=cfg.balance != "none", cache=cache, key=start_key)
    groups = param_groups(backbone, plan, cfg.lr, cfg.weight_decay)
    optimizer = make_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum)
    executor = PlanExecutor(backbone, plan, optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, epochs=cfg.epochs,
                            schedule=cfg.lr_schedule, step=cfg.lr_step, gamma=cfg.lr_gamma)
    dtype = torch.float16 if cfg.cache_dtype == "float16" else torch.float32

    def features(upto: int) -> dict[str, SplitTensors]:
        """Every split through the first ``upto`` steps, once per image (shared with other trials)."""
        prefix = steps[:upto]
        # each step by name and by what it computes (its modules and their settings, e.g. an activation a
        # surgery swapped): features of a changed prefix are never shared with the plain one
        names = tuple((n, repr(m)) for n, m in prefix)

        def compute_features():
            # start from a shallower freeze point's features when they are cached (float32 only: exact)
            start, base = cache.nearest(context, names) if dtype == torch.float32 else (0, None)
            source, first = (base, _as_float) if base is not None else (pixels, pixel_norm)
            return {s: SplitTensors(prefix_features(prefix[start:], t.images, first, dtype=dtype, compute=compute), t.labels)
                    for s, t in source.items()}

        return cache.features((context, names), compute_features, cfg.cache_limit_mb * 2**20)

    if cut:
        data, model, norm = features(cut), CachedSuffix(steps[cut:]), _as_float
    state = TrialState(cfg, backbone, plan, dataset, model, optimizer, compute)
    recut = None
    if steps and not cut and plan.controller is not None and plan.only_freezes:
        decomposition = Decomposition(steps)

        def recut(epoch: int):
            """After ``epoch``: when the controller has frozen a longer prefix for good, train on its features."""
            nonlocal cut, note, model, data, norm
            if epoch >= cfg.epochs:
                return None
            new, _ = leading_cut(backbone, executor.frozen_from_now_on(epoch), decomposition)
            if new <= cut:
                return None
            cut, data, norm = new, features(new), _as_float
            model = state.model = CachedSuffix(steps[cut:])
            note = f"on from epoch {epoch + 1}: {cut} steps up to {steps[cut - 1][0]}, frozen by the controller"
            executor.events.append({"epoch": epoch, "cached_from_epoch": epoch + 1, "cached_steps": cut,
                                    "cached_up_to": steps[cut - 1][0]})
            return model, data["train"], data["val"], data["test"], norm

    hooks = hook()
    hooks.trial_started(trial=state)

    def epoch_ended(epoch: int, record: dict[str, float]) -> None:
        state.history.append(record)
        hooks.epoch_ended(trial=state, epoch=epoch, record=record)
        if on_epoch is not None:
            on_epoch(epoch, record)

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
        on_epoch=epoch_ended,
        executor=executor,
        select=cfg.select_epoch,
        augment=cfg.augment == "online",
        balance=cfg.balance,
        compute=compute,
        recut=recut,
        whole=backbone.model,
    )
    state.outputs = collect_trial_outputs(model, backbone.model.get_submodule(backbone.head.name), data["test"].images,
                                          data["test"].labels, norm, cfg.strategy, dataset.classes, cfg.batch_size, compute)
    state.test_images, state.test_labels, state.normalize = pixels["test"].images, pixels["test"].labels, pixel_norm
    state.inspect = bool(inspect(outcome.best_val) if callable(inspect) else inspect)
    artifacts = [out for outs in hooks.trial_trained(trial=state) if outs for out in outs]
    peak, peak_of = _peak_memory(compute)
    return TrialResult(
        config=cfg,
        plan=plan,
        units=backbone.unit_names(),
        weights_source=backbone.weights_source + (f" ({backbone.weights_note})" if backbone.weights_note else ""),
        backbone=backbone,
        weights_sha256=backbone.weights_sha256,
        trainable_params=trainable_parameter_count(backbone.model),
        total_params=sum(p.numel() for p in backbone.model.parameters()),
        wall_seconds=time.perf_counter() - start,
        outcome=outcome,
        events=executor.events,
        prefix_cache=note,
        compute=compute.describe(),
        class_names=tuple(dataset.classes),
        outputs=state.outputs,
        artifacts=artifacts,
        inspected=state.inspect,
        peak_memory_mb=peak,
        peak_memory_of=peak_of,
        head_init=head_init,
    )


def _peak_memory(compute: Compute) -> tuple[float, str]:
    """The trial's peak memory on a CUDA device; on the CPU the process's peak RSS so far (an upper bound:
    the largest trial of the process so far, data included)."""
    if compute.cuda:
        return torch.cuda.max_memory_allocated(compute.device) / 2**20, "cuda allocated"
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process max RSS"


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
    inspect: Callable[[dict[str, float]], bool] | bool = True,
) -> TrialResult:
    """One whole trial: seed, build the backbone, plan and apply the freeze, train, measure (``fit``)."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    backbone, plan = build_and_plan(cfg, dataset.num_classes, spec, weights, strategy)
    return fit(cfg, backbone, plan, dataset, cache, on_epoch, started=start, inspect=inspect)
