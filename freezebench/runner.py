"""Run a suite: resolve everything first (so mistakes write nothing), then one Optuna study per
(dataset, backbone), each trial tracked as a nested MLflow run."""

from __future__ import annotations

import dataclasses
import math
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from typing import Protocol as _Protocol

from . import __version__, registry
from .backbone import BackboneSpec, WeightsRequest
from .augment import augment_array
from .config import BackboneRef, Choice, Config, DatasetRef, Range, Suite
from .dataset import ImageDataset
from .leakage import LeakReport
from .protocols import PROTOCOL_KEYS, Protocol, apply_protocol
from .errors import UserError
from .stores import Stores
from .weights import is_url
from .trial import DataCache, TrialConfig, TrialResult, parse_window, run_trial
from .units import with_granularity


def is_finished(trial) -> bool:
    """Complete, pruned, or failed for a recorded reason; an interrupted or killed trial is run again."""
    name = trial.state.name
    return name in ("COMPLETE", "PRUNED") or (name == "FAIL" and "fail_reason" in trial.user_attrs)


class TrialFailed(Exception):
    """A trial raised or diverged; recorded as failed, and the suite goes on."""


class Reporter(_Protocol):
    def study_started(self, study: str, n_trials: int, n_done: int) -> None: ...
    def trial_started(self, study: str, number: int, config: TrialConfig) -> None: ...
    def epoch_done(self, epoch: int, record: dict[str, float]) -> None: ...
    def trial_ended(self, study: str, number: int, state: str, value: float | None, reason: str = "") -> None: ...
    def study_ended(self, summary: "StudySummary") -> None: ...


class SilentReporter:
    def study_started(self, *a): ...
    def trial_started(self, *a): ...
    def epoch_done(self, *a): ...
    def trial_ended(self, *a): ...
    def study_ended(self, *a): ...


@dataclass
class StudyPlan:
    suite: Suite
    dataset_ref: DatasetRef
    dataset: ImageDataset
    backbone_ref: BackboneRef
    backbone: BackboneSpec
    units: dict[str, list[str]]  # granularity -> unit names
    protocol: Protocol = field(default_factory=Protocol)
    leaks: LeakReport = field(default_factory=LeakReport)
    fold: int | None = None

    @property
    def name(self) -> str:
        fold = f"/fold{self.fold}" if self.fold is not None else ""
        return f"{self.suite.name}/{self.dataset_ref.label}{fold}/{self.backbone_ref.name}"


@dataclass
class PreparedSuite:
    """A suite with every name checked and every dataset loaded and split; nothing written yet."""

    studies: list[StudyPlan]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (dataset, why)
    audits: list[tuple[str, LeakReport, bool]] = field(default_factory=list)  # (dataset, report, allowed)


@dataclass
class StudySummary:
    study: str
    dataset: str
    backbone: str
    counts: dict[str, int] = field(default_factory=dict)
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_test: dict[str, float] = field(default_factory=dict)
    parent_run_id: str = ""


def _resolve_path(value: str, base: Path) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p))


def _is_path_option(key: str) -> bool:
    return key in ("path", "root") or key.endswith(("_path", "_dir", "_root"))


def data_root(suite: Suite, base: Path) -> Path | None:
    """$FREEZEBENCH_DATA_ROOT, else the suite's data_root (relative to the config file)."""
    env = os.environ.get("FREEZEBENCH_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    return Path(_resolve_path(suite.data_root, base)) if suite.data_root else None


def _plugin_options(ref_name: str, options: dict[str, Any], where: str, base: Path, root: Path | None) -> tuple[Any, dict]:
    if ref_name not in registry.datasets():
        raise UserError(f"{where}: {registry.datasets().unknown_message(ref_name)}")
    dspec = registry.datasets().get(ref_name)
    plugin = {k: v for k, v in options.items() if k not in PROTOCOL_KEYS}
    bad = [k for k in plugin if k not in dspec.options]
    if bad:
        raise UserError(f"{where}: dataset {ref_name!r} has no option {bad[0]!r}; its options: {', '.join(dspec.options) or 'none'}.")
    plugin = {k: _resolve_path(v, base) if _is_path_option(k) and isinstance(v, str) else v for k, v in plugin.items()}
    if "root" in dspec.options and "root" not in plugin and dspec.data_subdir and root is not None:
        plugin["root"] = str(root / dspec.data_subdir)
    return dspec, plugin


def prepare_suite(config: Config, suite_name: str, allow_leaks: bool = False) -> PreparedSuite:
    """Check every name, option and file of a suite; load, split and audit its datasets. Writes nothing."""
    suite = config.suite(suite_name)
    base = config.path.resolve().parent
    where = f"{config.path}: suites.{suite_name}"
    strategies = registry.strategies()
    spec = suite.params["strategy"]
    names = spec.values if isinstance(spec, Choice) else (spec,)
    for name in names:
        if name not in strategies:
            raise UserError(f"{where}.params.strategy: {strategies.unknown_message(name)}")
    root = data_root(suite, base)
    prepared = PreparedSuite([])

    datasets = []
    for i, ref in enumerate(suite.datasets):
        key = f"{where}.datasets[{i}]"
        protocol = Protocol.from_options({k: v for k, v in ref.options.items() if k in PROTOCOL_KEYS}, key)
        dspec, options = _plugin_options(ref.name, ref.options, key, base, root)
        missing = dspec.available(**options) if dspec.available else None
        if missing:
            prepared.skipped.append((ref.label, missing))
            continue

        def load_external(table: dict, _key=key) -> ImageDataset:
            espec, eopts = _plugin_options(table["name"], {k: v for k, v in table.items() if k != "name"}, f"{_key}.test_on", base, root)
            return espec.load(**eopts)

        dataset = dspec.load(**options)
        folds = range(protocol.folds) if protocol.split == "kfold" and protocol.fold is None else [protocol.fold]
        for fold in folds:
            p = dataclasses.replace(protocol, fold=fold) if fold is not None else protocol
            split, report = apply_protocol(dataset, p, load_external, augment_array)
            allowed = allow_leaks or protocol.allow_leaks
            blocking = report.subjects or report.protocol or (report.duplicates and split.split_source != "given")
            label = ref.label + (f"/fold{fold}" if fold is not None and protocol.split == "kfold" else "")
            if blocking and not allowed:
                raise UserError(
                    f"{key}: leak audit of {label!r}: {report.summary()}. Fix the data or the protocol, or set "
                    "allow_leaks = true for this dataset (or pass --allow-leaks) to reproduce it on purpose; "
                    "the runs are then flagged."
                )
            if not report.clean:
                report.allowed = bool(blocking and allowed)
                prepared.audits.append((label, report, bool(allowed)))
            datasets.append((ref, split, p, report, fold if protocol.split == "kfold" else None))

    backbones = []
    for ref in suite.backbones:
        if ref.name not in registry.backbones():
            raise UserError(f"{where}.backbones: {registry.backbones().unknown_message(ref.name)}")
        if ref.weights and not is_url(ref.weights):
            ref = BackboneRef(ref.name, _resolve_path(ref.weights, base), ref.sha256)
            if not Path(ref.weights).is_file():
                raise UserError(f"{where}.backbones: weights file for {ref.name!r} not found: {ref.weights}")
        bspec = registry.backbones().get(ref.name)
        skeleton = bspec.build(2, WeightsRequest(pretrained=False))
        units = {}
        for granularity in _values(suite.params.get("granularity", "block")):
            units[granularity] = with_granularity(skeleton, granularity).unit_names()
            _check_unit_params(where, suite, [strategies.get(n) for n in names], ref.name, granularity, units[granularity])
        backbones.append((ref, bspec, units))

    prepared.studies = [
        StudyPlan(suite, dref, ds, bref, bspec, units, protocol, report, fold)
        for dref, ds, protocol, report, fold in datasets
        for bref, bspec, units in backbones
    ]
    if not prepared.studies:
        why = "; ".join(f"{name}: {reason}" for name, reason in prepared.skipped)
        raise UserError(f"{where}: no dataset of this suite is available ({why}). Set data_root in the suite, "
                        "or FREEZEBENCH_DATA_ROOT, to the folder that holds the datasets.")
    return prepared


def _values(spec) -> tuple:
    if isinstance(spec, Choice):
        return spec.values
    if isinstance(spec, Range):
        return (spec.low, spec.high)
    return (spec,)


def _check_unit_params(where: str, suite: Suite, strategies, backbone: str, granularity: str, units: list[str]) -> None:
    """Fixed or listed unit/window values must exist for this backbone (searched ones are drawn in range)."""
    n = len(units)
    for strategy in strategies:
        for p in strategy.params:
            if p.name not in suite.params:
                continue
            key = f"{where}.params.{p.name}"
            for v in _values(suite.params[p.name]):
                if v is None:  # an open range bound
                    continue
                if p.kind == "unit" and (not isinstance(v, int) or isinstance(v, bool) or not -n <= v <= n):
                    raise UserError(
                        f"{key}: {v!r} is not a unit index for backbone {backbone!r} ({granularity} units): "
                        f"use 0..{n} (or -{n}..-1 counted from the end); its {n} units are: {', '.join(units)}"
                    )
                if p.kind == "window":
                    try:
                        parse_window(v, units, backbone)
                    except UserError as exc:
                        raise UserError(f"{key}: {exc}") from None


def _trial_name(number: int, cfg: TrialConfig) -> str:
    extra = "".join(f" {k}={v}" for k, v in cfg.strategy_params.items())
    return f"t{number:03d} {cfg.strategy}{extra} lr={cfg.lr:.2g}"


def run_study(plan: StudyPlan, stores: Stores, tracker, reporter: Reporter, cache: DataCache) -> StudySummary:
    import optuna

    from .search import direction, grid_size, make_pruner, make_sampler, suggest_config

    suite, metric = plan.suite, plan.suite.metric
    strategies = registry.strategies()
    n_units = {g: len(u) for g, u in plan.units.items()}
    n_trials = min(suite.n_trials, grid_size(suite, strategies, n_units) or suite.n_trials)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported by us, with reasons
    study = optuna.create_study(
        study_name=plan.name,
        storage=stores.optuna_url,
        sampler=make_sampler(suite, strategies, n_units),
        pruner=make_pruner(suite),
        direction=direction(metric),
        load_if_exists=True,
    )
    experiment_id = tracker.experiment_id(plan.dataset_ref.label)
    base_tags = {
        "freezebench.suite": suite.name,
        "freezebench.study": plan.name,
        "freezebench.dataset": plan.dataset_ref.label,
        "freezebench.backbone": plan.backbone_ref.name,
        "freezebench.objective": f"val_{metric}",
        "freezebench.protocol": plan.protocol.describe(),
        "freezebench.leaks": plan.leaks.summary(),
        "freezebench.leaks_allowed": str(plan.leaks.allowed).lower(),
    }
    parent = tracker.study_run(
        experiment_id,
        plan.name,
        base_tags,
        {
            "n_trials": n_trials,
            "sampler": suite.sampler,
            "pruner": suite.pruner,
            "seed": suite.seed,
            **{f"units_{g}": ", ".join(u) for g, u in plan.units.items()},
            "search_space": repr(suite.params),
            "dataset_source": plan.dataset.source,
            "split_hash": plan.dataset.split_hash(),
            "split_counts": repr(plan.dataset.counts()),
        },
    )
    weights = WeightsRequest(True, plan.backbone_ref.weights, plan.backbone_ref.sha256)

    def objective(trial: optuna.Trial) -> float:
        cfg = suggest_config(trial, suite, strategies, n_units)
        params = {
            **cfg.as_flat_dict(),
            "dataset": plan.dataset_ref.label,
            "backbone": plan.backbone_ref.name,
            "split_hash": plan.dataset.split_hash(),
            "optuna_trial": trial.number,
        }
        tags = {**base_tags, "freezebench.strategy": cfg.strategy, "freezebench.optuna_trial": str(trial.number),
                "freezebench.strategy_params": " ".join(f"{k}={v}" for k, v in cfg.strategy_params.items()) or "-"}
        run_id = tracker.start_trial(experiment_id, parent, _trial_name(trial.number, cfg), tags, params)
        trial.set_user_attr("mlflow_run_id", run_id)
        reporter.trial_started(plan.name, trial.number, cfg)

        def on_epoch(epoch: int, record: dict[str, float]) -> None:
            tracker.log_epoch(run_id, epoch, record)
            reporter.epoch_done(epoch, record)
            value = record[f"val_{metric}"]
            if math.isfinite(value):
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        try:
            result: TrialResult = run_trial(
                cfg, plan.dataset, plan.backbone, weights, strategies.get(cfg.strategy), cache, on_epoch
            )
        except optuna.TrialPruned as exc:
            tracker.end_trial(run_id, "pruned", str(exc))
            reporter.trial_ended(plan.name, trial.number, "pruned", None, str(exc))
            raise
        except (UserError, KeyboardInterrupt) as exc:
            tracker.end_trial(run_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            tracker.end_trial(run_id, "failed", reason + "\n" + traceback.format_exc(limit=5))
            trial.set_user_attr("fail_reason", reason)
            reporter.trial_ended(plan.name, trial.number, "failed", None, reason)
            raise TrialFailed(reason) from exc
        tracker.finish_trial(run_id, result, {"freezebench.frozen_units": ",".join(result.plan.frozen) or "-",
                                              "freezebench.prefix_cache": result.prefix_cache})
        for k, v in result.outcome.test.items():
            trial.set_user_attr(f"test_{k}", v)
        trial.set_user_attr("trainable_params", result.trainable_params)
        value = result.outcome.best_val[metric]
        reporter.trial_ended(plan.name, trial.number, "complete", value)
        return value

    done = sum(is_finished(t) for t in study.trials)
    reporter.study_started(plan.name, n_trials, done)
    if done < n_trials:
        try:
            study.optimize(objective, n_trials=n_trials - done, catch=(TrialFailed,))
        except BaseException:
            tracker.client.set_terminated(parent, "KILLED")
            raise
    summary = summarize(study, plan, parent)
    tracker.finish_study(
        parent,
        {f"best_val_{metric}": summary.best_value, **{f"best_test_{k}": v for k, v in summary.best_test.items()},
         **{f"n_{k}": v for k, v in summary.counts.items()}},
        {"freezebench.version": __version__},
    )
    reporter.study_ended(summary)
    return summary


def summarize(study, plan: StudyPlan, parent_run_id: str) -> StudySummary:
    counts: dict[str, int] = {}
    for t in study.trials:
        state = t.state.name.lower() if is_finished(t) or t.state.name != "FAIL" else "interrupted"
        counts[state] = counts.get(state, 0) + 1
    summary = StudySummary(plan.name, plan.dataset_ref.label, plan.backbone_ref.name, counts, parent_run_id=parent_run_id)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        summary.best_value = best.value
        summary.best_params = {**{k: v for k, v in best.user_attrs.items() if k in ("strategy", "lr")}, **best.params}
        summary.best_test = {k[5:]: v for k, v in best.user_attrs.items() if k.startswith("test_")}
    return summary


def run_suite(plans: "list[StudyPlan] | PreparedSuite", stores: Stores, reporter: Reporter | None = None) -> list[StudySummary]:
    if isinstance(plans, PreparedSuite):
        plans = plans.studies
    from .tracking import Tracker

    reporter = reporter or SilentReporter()
    stores.prepare()
    tracker = Tracker(stores.tracking_uri, stores.artifact_root)
    cache = DataCache()
    return [run_study(plan, stores, tracker, reporter, cache) for plan in plans]
