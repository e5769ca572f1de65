"""Run a prepared suite (see ``preparation``): one Optuna study per (dataset, backbone), each
trial tracked as a nested MLflow run under the study's parent run."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import math
import tempfile
import time
import traceback
from pathlib import Path
from typing import Iterator, Protocol

import optuna

from .. import __version__, plugins
from ..analysis import Output, case_name, close_figures, one_at_a_time, trial_analyses
from ..backbone import WeightsRequest
from ..engine.datacache import DataCache
from ..engine.saved import save_model
from ..engine.trial import run_trial
from ..errors import StoreFault, UserError, fault_of
from ..records import StudySummary, TrialConfig, TrialResult
from ..results import layout, stats
from ..results.figures import test_figures
from ..results.leaderboard import store as store_leaderboard
from ..results.tracking import Tracker
from ..strategy import REFERENCES
from .config import RESPLIT_FOLDS, suite_toml
from .confirmation import Candidate, keeps_model, members
from .preparation import PreparedSuite, StudyPlan
from .protocols import fold_resplit, resplit
from .search import direction, grid_size, make_pruner, make_sampler, suggest_config
from .stores import Stores
from .studies import (AMOUNTS_ATTR, CASE_ATTR, REPEAT_ATTR, REPEAT_LIMIT, SETTINGS_ATTR, StopAtTrials, claims_slot, earlier_with, fail_stale,
                      heartbeat_settings, is_finished, is_repeat, is_surplus, live_trials, open_study, release_surplus,
                      repeats_in_a_row, unanswered_reference, retry_interrupted, settings_key, storage)


class TrialFailed(Exception):
    """A trial raised or diverged; recorded as failed, and the suite goes on."""


class Reporter(Protocol):
    def study_started(self, study: str, n_trials: int, n_done: int) -> None: ...
    def trial_started(self, study: str, number: int, config: TrialConfig) -> None: ...
    def epoch_done(self, epoch: int, record: dict[str, float]) -> None: ...
    def trial_ended(self, study: str, number: int, state: str, value: float | None, reason: str = "") -> None: ...
    def study_ended(self, summary: "StudySummary") -> None: ...
    def note(self, study: str, message: str) -> None: ...


class SilentReporter:
    def study_started(self, *a): ...
    def trial_started(self, *a): ...
    def epoch_done(self, *a): ...
    def trial_ended(self, *a): ...
    def study_ended(self, *a): ...
    def note(self, *a): ...


def _trial_name(number: int, cfg: TrialConfig) -> str:
    extra = "".join(f" {k}={v}" for k, v in cfg.strategy_params.items())
    return f"t{number:03d} {cfg.strategy}{extra} lr={cfg.lr:.2g}"


def _versions() -> dict[str, str]:
    out = {layout.tag("version"): __version__}
    for dist in ("torch", "timm", "optuna", "mlflow"):
        try:
            out[layout.tag(f"{dist}_version")] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def planned_trials(plan: StudyPlan) -> int:
    """The study's trial count: the suite's ``n_trials``, or fewer when a grid has fewer points."""
    n_units = {g: len(u) for g, u in plan.units.items()}
    return min(plan.suite.n_trials, grid_size(plan.suite, plugins.strategies(), n_units) or plan.suite.n_trials)


def trial_outputs(result: TrialResult) -> Iterator[Output]:
    """Everything logged with a trial: the lifecycle hooks' outputs, the test predictions, and when the trial
    is analysed (the suite's ``analyses``) the trial analyses and the test figures. Made as they are logged:
    each analysis draws its figures when the previous one's are logged and closed."""
    yield from result.artifacts
    if result.outputs is not None and result.inspected:
        yield from trial_analyses(result.outputs)
    if result.outcome.test_probs is not None:
        yield from one_at_a_time(test_figures(result.outcome.test_labels, result.outcome.test_probs, result.class_names,
                                              figures=result.inspected))


def uncertainty(result: TrialResult) -> tuple[dict[str, float], dict[str, str]]:
    """The test metrics' 95% intervals (and balanced accuracy) as metrics, and the degenerate flag as a tag."""
    out = result.outcome
    if out.test_probs is None:
        return {}, {}
    metrics = {}
    for name, interval in stats.intervals(out.test_labels, out.test_probs).items():
        if name not in out.test:  # balanced accuracy; the others are the engine's own values
            metrics[f"test_{name}"] = interval.value
        metrics[layout.ci(name, "low")], metrics[layout.ci(name, "high")] = interval.low, interval.high
    return metrics, {layout.DEGENERATE: str(stats.is_degenerate(out.test_probs)).lower(),
                     layout.ANALYSED: str(result.inspected).lower()}


def _record(tracker: Tracker, run_id: str, result: TrialResult, keep_model: dict | None = None) -> None:
    """Record a trained trial, with its trained model when ``keep_model`` (what the model's manifest says of
    where it came from). When the store refuses (a full disk, a folder turned read-only), the run is closed
    as failed where it still can be, and the fault is raised: the same command retries it."""
    metrics, tags = uncertainty(result)
    try:
        with tempfile.TemporaryDirectory(prefix="freezebench-model-") as tmp:
            model_dir = None
            if keep_model is not None and result.backbone is not None:
                about = {**keep_model, "run_id": run_id, "strategy": result.config.strategy,
                         "strategy_params": result.config.strategy_params, "lr": result.config.lr,
                         "frozen_units": list(result.plan.frozen), "best_epoch": result.outcome.best_epoch,
                         "val": result.outcome.best_val,
                         "test_metrics": {**{f"test_{k}": v for k, v in result.outcome.test.items()}, **metrics}}
                model_dir = save_model(result.backbone, result.config, result.class_names, Path(tmp) / "model", about,
                                       surgery=result.plan.surgery)
            tracker.finish_trial(run_id, result, trial_outputs(result), metrics, tags, model_dir)
    except Exception as exc:
        close_figures(result.artifacts)  # the lifecycle hooks' figures, drawn before recording began
        fault = fault_of(exc)
        with contextlib.suppress(Exception):  # the store may refuse this too; then the retry closes it
            tracker.end_trial(run_id, "failed", f"recording its results failed: {fault or type(exc).__name__}: {exc}")
        if fault is None:
            raise
        raise StoreFault(f"Recording trial {result.config.strategy} lr={result.config.lr:.2g} failed: {fault}. "
                         "Its run is marked failed; finished trials are kept. Fix the cause, then run the same "
                         "command again: the study resumes and retries it.") from exc
    plugins.hook().trial_finished(result=result, run_id=run_id)


def run_study(plan: StudyPlan, stores: Stores, tracker: Tracker, reporter: Reporter, cache: DataCache) -> StudySummary:
    suite, metric = plan.suite, plan.suite.metric
    strategies = plugins.strategies()
    n_units = {g: len(u) for g, u in plan.units.items()}
    n_trials = planned_trials(plan)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported by us, with reasons
    experiment_id = tracker.experiment_id(plan.dataset_ref.label, dataset_about(plan))
    base_tags = {
        layout.SUITE: suite.name,
        layout.STUDY_NAME: plan.name,
        layout.DATASET: plan.dataset_ref.label,
        layout.BACKBONE: plan.backbone_ref.name,
        layout.OBJECTIVE: f"val_{metric}",
        layout.tag("protocol"): plan.protocol.describe(),
        layout.tag("leaks"): plan.leaks.summary(),
        layout.tag("leaks_allowed"): str(plan.leaks.allowed).lower(),
        **_versions(),
    }
    parent_params = {
        "n_trials": n_trials, "sampler": suite.sampler, "pruner": suite.pruner, "prune_on": suite.prune_on,
        "analyses": suite.analyses,
        "seed": suite.seed, **{f"units_{g}": ", ".join(u) for g, u in plan.units.items()},
        "search_space": repr(suite.params), "dataset_source": plan.dataset.source,
        "split_hash": plan.dataset.split_hash(), layout.SPLIT_COUNTS: repr(plan.dataset.counts()),
    }
    study, parent = open_study(
        plan.name, stores.optuna_url, make_sampler(suite, strategies, n_units), make_pruner(suite), direction(metric),
        lambda: tracker.study_run(experiment_id, plan.name, base_tags, parent_params),
    )
    tracker.reopen(parent)
    tracker.client.log_text(parent, suite_toml(suite), layout.SUITE_TOML)

    def close_stale() -> None:  # killed mid-trial: its MLflow run is closed, its settings are queued again
        for stale in fail_stale(study):
            if "mlflow_run_id" in stale.user_attrs:
                tracker.end_trial(stale.user_attrs["mlflow_run_id"], "interrupted", "the process stopped (killed?)",
                                  only_if_running=True)

    close_stale()
    weights = WeightsRequest(True, plan.backbone_ref.weights, plan.backbone_ref.sha256)
    sign = 1.0 if direction(metric) == "minimize" else -1.0
    maximize = direction(metric) == "maximize"
    protected = REFERENCES  # the first linear_probe / full trial runs to the end: the recommendation is compared with it

    def objective(trial: optuna.Trial) -> float:
        if not claims_slot(trial, n_trials):  # another worker took the last slot a moment earlier
            release_surplus(trial)
            raise optuna.TrialPruned("surplus: the study already has its trials")
        cfg = suggest_config(trial, suite, strategies, n_units)
        key, case = settings_key(cfg), case_name(cfg.strategy, cfg.strategy_params)
        trial.set_user_attr(SETTINGS_ATTR, key)
        trial.set_user_attr(CASE_ATTR, case)
        same = earlier_with(trial.study, trial.number, key)
        if same is not None:  # the sampler proposed settings already tried: nothing is trained or recorded again
            trial.set_user_attr(REPEAT_ATTR, same.number)
            if repeats_in_a_row(trial.study) + 1 >= REPEAT_LIMIT:
                trial.study.stop()
            if same.state.name == "COMPLETE":
                return same.value  # the sampler learns the known value
            raise optuna.TrialPruned(f"repeats trial {same.number}")
        params = {**cfg.as_flat_dict(), "dataset": plan.dataset_ref.label, "backbone": plan.backbone_ref.name,
                  "split_hash": plan.dataset.split_hash(), "optuna_trial": trial.number}
        tags = {**base_tags, layout.STRATEGY: cfg.strategy, layout.OPTUNA_TRIAL: str(trial.number),
                layout.STRATEGY_PARAMS: " ".join(f"{k}={v}" for k, v in cfg.strategy_params.items()) or "-"}
        run_id = tracker.start_trial(experiment_id, parent, _trial_name(trial.number, cfg), tags, params)
        trial.set_user_attr("mlflow_run_id", run_id)
        reporter.trial_started(plan.name, trial.number, cfg)

        def on_epoch(epoch: int, record: dict[str, float]) -> None:
            tracker.log_epoch(run_id, epoch, record)
            reporter.epoch_done(epoch, record)
            value = record[f"val_{metric}"] if suite.prune_on == "metric" else sign * record["val_loss"]
            if math.isfinite(value):
                trial.report(value, epoch)
                if trial.should_prune() and not unanswered_reference(trial.study, cfg.strategy, protected):
                    raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        try:
            result: TrialResult = run_trial(cfg, plan.dataset, plan.backbone, weights, strategies.get(cfg.strategy), cache,
                                            on_epoch, inspect=lambda val: _analysed(suite, trial.study, case, val[metric]))
        except optuna.TrialPruned as exc:
            tracker.end_trial(run_id, "pruned", str(exc))
            reporter.trial_ended(plan.name, trial.number, "pruned", None, str(exc))
            raise
        except KeyboardInterrupt:
            tracker.end_trial(run_id, "interrupted", "interrupted (Ctrl-C or a stop signal); its settings run first next time")
            retry_interrupted(trial.study, trial)
            raise
        except UserError as exc:
            tracker.end_trial(run_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            tracker.end_trial(run_id, "failed", reason + "\n" + traceback.format_exc(limit=5))
            trial.set_user_attr("fail_reason", reason)
            reporter.trial_ended(plan.name, trial.number, "failed", None, reason)
            raise TrialFailed(reason) from exc
        value = result.outcome.best_val[metric]
        trial.set_user_attr(AMOUNTS_ATTR, result.plan.amounts_to)
        keep = None
        earlier = _finished(trial.study)  # one read of the study for both rules
        this = Candidate(run_id, cfg.strategy, value, trial.number, result.plan.amounts_to)
        if _best_so_far([c.value for c in earlier], value, maximize) or keeps_model(
                earlier, this, suite.confirm, maximize):  # export, predict, the confirmed ensembles
            keep = {"dataset": plan.dataset_ref.label, "study": plan.name, "optuna_trial": trial.number,
                    "selected_on": f"val_{metric}"}
        try:
            _record(tracker, run_id, result, keep)
        except StoreFault:
            with contextlib.suppress(Exception):  # its settings run first next time, as after Ctrl-C
                retry_interrupted(trial.study, trial)
            raise
        for k, v in result.outcome.test.items():
            trial.set_user_attr(f"test_{k}", v)
        trial.set_user_attr("trainable_params", result.trainable_params)
        reporter.trial_ended(plan.name, trial.number, "complete", value)
        return value

    reporter.study_started(plan.name, n_trials, sum(is_finished(t) for t in study.trials))
    try:
        _fill(study, objective, n_trials, close_stale, reporter, plan.name)
    except BaseException:
        tracker.client.set_terminated(parent, "KILLED")
        raise
    if suite.confirm.enabled:
        confirm_set(study, plan, suite, tracker, experiment_id, parent, weights, cache, reporter)
    summary = summarize(study, plan, parent)
    tracker.finish_study(
        parent,
        {layout.best_val(metric): summary.best_value, **{f"best_test_{k}": v for k, v in summary.best_test.items()},
         **{f"n_{k}": v for k, v in summary.counts.items()}},
    )
    store_leaderboard(tracker, plan.dataset_ref.label, metric)
    reporter.study_ended(summary)
    plugins.hook().study_finished(summary=summary)
    return summary


def _complete_values(study, case: str | None = None) -> list[float]:
    """The values of the study's complete trials (of one case: ``case_name``, when given)."""
    return [t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if not is_repeat(t) and (case is None or t.user_attrs.get(CASE_ATTR) == case)]


def _finished(study) -> list[Candidate]:
    """The study's complete search trials as confirmation candidates (their run ids are not needed here)."""
    return [Candidate(str(t.number), t.params.get("strategy", t.user_attrs.get("strategy", "?")), t.value, t.number,
                      t.user_attrs.get(AMOUNTS_ATTR))
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if not is_repeat(t) and t.value is not None and math.isfinite(t.value)]


def _best_so_far(done: list[float], value: float, maximize: bool) -> bool:
    """``value`` ties or beats every value in ``done`` (so the final best trial, and any trial tied with it,
    is always among those that got it: the kept model, the analyses)."""
    if not math.isfinite(value):
        return False
    return not done or (value >= max(done) if maximize else value <= min(done))


def _analysed(suite, study, case: str, value: float) -> bool:
    """Whether a search trial gets the trial analyses and test figures (``suite.analyses``): with "best", when
    it is the best so far of its case, so that every case's best trial, the one study analyses and the report
    show, has them."""
    if suite.analyses != "best":
        return suite.analyses == "all"
    return _best_so_far(_complete_values(study, case), value, study.direction.name == "MAXIMIZE")


def _fill(study, objective, n_trials: int, close_stale, reporter: Reporter, name: str) -> None:
    """Run trials until the study has ``n_trials`` finished ones. Queued trials (settings of killed or
    interrupted trials) run first. When every open slot is held by a trial running elsewhere (another
    worker, or a process killed a moment ago), wait for them: a killed trial goes stale after the
    heartbeat grace and is queued again, and this process runs it. Give up waiting when nothing has
    changed for the grace and two heartbeats, and say so."""
    interval, grace = heartbeat_settings()
    patience, waited_since, seen = grace + 2 * interval, None, None
    while True:
        done = sum(is_finished(t) for t in study.get_trials(deepcopy=False))
        live = live_trials(study)
        if done >= n_trials:
            return
        if repeats_in_a_row(study) >= REPEAT_LIMIT:
            reporter.note(name, f"stopping with {done} of {n_trials} trials: the last {REPEAT_LIMIT} settings the sampler "
                                "proposed had all been tried; the search space has no more new settings")
            return
        if done + len(live) < n_trials or any(t.state.name == "WAITING" for t in live):
            study.optimize(objective, n_trials=n_trials - done, catch=(TrialFailed,), callbacks=[StopAtTrials(n_trials)])
            waited_since = None
            continue
        state = (done, tuple(t.number for t in live))
        if waited_since is None or state != seen:
            waited_since, seen = time.monotonic(), state
            reporter.note(name, f"waiting for trial(s) {', '.join(str(t.number) for t in live)}, running in another process "
                                f"(or killed: then retried here once its heartbeat is {grace} s old)")
        elif time.monotonic() - waited_since > patience:
            reporter.note(name, f"stopping with {done} of {n_trials} trials finished: trial(s) "
                                f"{', '.join(str(t.number) for t in live)} still run in another process. Run the same "
                                "command again to finish the study once they end (a killed one is retried then).")
            return
        time.sleep(interval)
        close_stale()


def confirm_set(study, plan: StudyPlan, suite, tracker, experiment_id: str, parent: str, weights, cache, reporter) -> None:
    """Train the confirmation set (``confirmation.members``) again with each extra seed: once each, resumable.
    Each re-run keeps its trained model (``confirm.ensemble``, the default: the seeds' models make one ensemble),
    else each configuration keeps one (its search trial's, else its first re-run's)."""
    runs = {t.number: t.user_attrs.get("mlflow_run_id") for t in study.trials if t.state.name == "COMPLETE"}
    found = {r.info.run_id: r for r in tracker.client.search_runs(
        [experiment_id], layout.where(layout.TRIAL, finished=True, study=plan.name), max_results=5000)}
    candidates = [Candidate(run_id, found[run_id].data.tags.get(layout.STRATEGY, "?"), t.value, t.number,
                            found[run_id].data.tags.get(layout.AMOUNTS_TO))
                  for t in study.trials if t.state.name == "COMPLETE" and (run_id := runs[t.number]) in found]
    chosen = members(candidates, suite.confirm, study.direction.name == "MAXIMIZE")
    strategies = plugins.strategies()
    splits: dict[object, object] = {}  # seed or fold -> its dataset (kept alive: the data cache knows datasets by id)
    folds = plan.validation_folds  # made (and checked) while preparing, with resplit = "folds"
    n_folds = len(folds) if folds else None

    def data_for(seed: int, own: int) -> tuple[object, int | None]:
        """The dataset a re-run with ``seed`` trains on, and its validation fold (``resplit = "folds"``)."""
        if not suite.confirm.resplit:
            return plan.dataset, None
        if suite.confirm.resplit == RESPLIT_FOLDS:
            fold = suite.confirm.seeds_for(own, n_folds).index(seed) % n_folds
            if ("fold", fold) not in splits:
                splits["fold", fold] = fold_resplit(plan.dataset, folds, fold)
            return splits["fold", fold], fold
        if seed not in splits:
            splits[seed] = resplit(plan.dataset, [plan.protocol.seed, seed], plan.protocol.level)
        return splits[seed], None

    if chosen:
        reporter.note(plan.name, f"confirming {len(chosen)} configuration(s) with extra seeds: "
                                 + "; ".join(f"{found[c.run_id].info.run_name} ({why})" for c, why in chosen))
    for candidate, why in chosen:
        source = found[candidate.run_id]
        cfg = _config_of(tracker, source)
        done = tracker.confirm_runs(experiment_id, source.info.run_id)
        has_model = source.data.tags.get(layout.MODEL) == "kept" or any(
            r.data.tags.get(layout.MODEL) == "kept" for r in done.values())
        for seed in suite.confirm.seeds_for(cfg.seed, n_folds):
            if seed in done:
                continue
            run_cfg = dataclasses.replace(cfg, seed=seed)
            tags = {**{k: v for k, v in source.data.tags.items()
                       if k.startswith(layout.tag("")) and k not in (layout.ROLE, layout.MODEL, layout.STATE)},
                    layout.CONFIRM_OF: source.info.run_id, layout.CONFIRM_WHY: why}
            data, fold = data_for(seed, cfg.seed)
            run_id = tracker.start_trial(experiment_id, parent, f"{source.info.run_name} seed={seed}", tags,
                                         {**run_cfg.as_flat_dict(), "confirm_of": source.info.run_id,
                                          "split_hash": data.split_hash(), "resplit": suite.confirm.resplit,
                                          **({"validation_fold": fold} if fold is not None else {})},
                                         role=layout.CONFIRM)
            reporter.trial_started(plan.name, candidate.number, run_cfg)
            try:
                result = run_trial(run_cfg, data, plan.backbone, weights, strategies.get(cfg.strategy), cache,
                                   lambda e, r, _id=run_id: tracker.log_epoch(_id, e, r), inspect=suite.analyses == "all")
            except KeyboardInterrupt:
                tracker.end_trial(run_id, "interrupted", "interrupted (Ctrl-C or a stop signal); it runs again next time")
                raise
            except UserError as exc:
                tracker.end_trial(run_id, "failed", f"{type(exc).__name__}: {exc}")
                raise
            except Exception as exc:  # a failed confirmation is recorded, the others go on (and it is retried next time)
                tracker.end_trial(run_id, "failed", f"{type(exc).__name__}: {exc}")
                reporter.trial_ended(plan.name, candidate.number, f"confirmation failed (seed {seed})", None, f"{type(exc).__name__}: {exc}")
                continue
            keep = None if has_model and not suite.confirm.ensemble else {"dataset": plan.dataset_ref.label, "study": plan.name,
                                           "optuna_trial": candidate.number, "selected_on": f"confirmation ({why})"}
            _record(tracker, run_id, result, keep)
            has_model = True
            reporter.trial_ended(plan.name, candidate.number, f"confirmed (seed {seed}, {why})",
                                 result.outcome.best_val[plan.suite.metric])


def _config_of(tracker: Tracker, run) -> TrialConfig:
    return TrialConfig.from_flat_dict(tracker.trial_config(run.info.run_id))


def summarize(study, plan: StudyPlan, parent_run_id: str) -> StudySummary:
    counts: dict[str, int] = {}
    for t in study.trials:
        if is_surplus(t) or is_repeat(t):
            continue
        state = t.state.name.lower() if is_finished(t) or t.state.name != "FAIL" else "interrupted"
        counts[state] = counts.get(state, 0) + 1
    summary = StudySummary(plan.name, plan.dataset_ref.label, plan.backbone_ref.name, counts, parent_run_id=parent_run_id)
    complete = [t for t in study.trials if t.state.name == "COMPLETE" and not is_repeat(t)]
    if complete:
        best = (max if study.direction.name == "MAXIMIZE" else min)(complete, key=lambda t: t.value)
        summary.best_value = best.value
        summary.best_params = {**{k: v for k, v in best.user_attrs.items() if k in ("strategy", "lr")}, **best.params}
        summary.best_test = {k[5:]: v for k, v in best.user_attrs.items() if k.startswith("test_")}
    return summary


def run_suite(plans: "list[StudyPlan] | PreparedSuite", stores: Stores, reporter: Reporter | None = None) -> list[StudySummary]:
    if isinstance(plans, PreparedSuite):
        plans = plans.studies
    reporter = reporter or SilentReporter()
    stores.prepare()
    with stores.lock():  # one process at a time creates or migrates the local stores' schemas
        try:
            stores.create_whole(stores.tracking_uri,
                                lambda uri: Tracker(uri, stores.artifact_root).client.search_experiments(max_results=1))
            tracker = Tracker(stores.tracking_uri, stores.artifact_root)
            tracker.client.search_experiments(max_results=1)
        except Exception as exc:  # a damaged SQLite file, a half-finished migration, a server that refuses
            if fault_of(exc):
                raise StoreFault(f"Cannot write the MLflow store {stores.tracking_uri}: {fault_of(exc)}. Nothing was "
                                 "left half-made; fix the cause, then run again.") from None
            raise UserError(f"Cannot open the MLflow store {stores.tracking_uri}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:300]}. If a run was stopped while creating it (or the disk filled "
                            "up), the file is damaged: move it away and run again; finished results are in optuna.db "
                            "and mlartifacts/.") from None
        stores.create_whole(stores.optuna_url, storage)
        moved = stores.relocate_artifacts()  # a moved results dir: its runs' artifacts stay in it
        if moved:
            reporter.note("", moved)
    for plan in plans:  # before anything is written: one label, one task
        clash = tracker.experiment_clash(plan.dataset_ref.label, dataset_about(plan))
        if clash:
            ref = plan.dataset_ref
            raise UserError(
                f"Dataset {ref.label!r} of suite {plan.suite.name!r} ({ref.name}, classes {', '.join(plan.dataset.classes)}): the "
                f"results store {stores.tracking_uri} already holds results under {ref.label!r} for another task ({clash}); "
                f"their leaderboards would mix. Give this dataset its own alias in the suite "
                f"({{ name = \"{ref.name}\", ..., alias = \"{ref.name}_{plan.suite.name}\" }}) or use another --results-dir. "
                "Nothing was written.")
    cache = DataCache()
    return [run_study(plan, stores, tracker, reporter, cache) for plan in plans]


def dataset_about(plan: StudyPlan) -> dict[str, str]:
    """What a dataset label's experiment holds: the dataset plugin and its classes."""
    return {layout.DATASET_PLUGIN: plan.dataset_ref.name, layout.CLASSES: ",".join(plan.dataset.classes)}
