"""`freezebench run`: run a suite from benchmarks.toml with live progress and a summary."""

from __future__ import annotations

import shlex

import click

from .console import console, styled
from .options import store_options


def prepare(suite: str, config_path: str | None, allow_leaks: bool, n_trials: int | None = None):
    """Load the config and prepare SUITE (every name, file and split checked, nothing written), and
    say which datasets are skipped and what the leak audit found: ``run`` and ``worker`` alike."""
    import dataclasses

    from .. import plugins
    from ..suite.config import load_config
    from ..suite.preparation import prepare_suite
    from ..suite.studies import heartbeat_settings

    heartbeat_settings()  # a bad FREEZEBENCH_HEARTBEAT_GRACE is named before anything is read or written

    declared = {p.name: e.name for e in plugins.strategies().entries() for p in e.obj.params}
    config = load_config(config_path, declared)
    if n_trials:
        config.suites[suite] = dataclasses.replace(config.suite(suite), n_trials=n_trials)
    with console.status(f"Preparing suite {suite!r} (datasets, splits, leak audit, backbones)..."):
        prepared = prepare_suite(config, suite, allow_leaks=allow_leaks)
    for name, why in prepared.skipped:
        console.print(styled((f"Skipping dataset {name}", "yellow"), f": {why}"), highlight=False, soft_wrap=True)
    for name, note in prepared.notes:
        console.print(styled((f"Backbone {name}", "yellow"), f": {note}"), highlight=False, soft_wrap=True)
    for name, report, allowed in prepared.audits:
        note = "allowed, and flagged on every run" if allowed else "the dataset's own splits: recorded on every run"
        console.print(styled((f"Leak audit {name}", "yellow"), f": {report.summary()} ({note})"), highlight=False, soft_wrap=True)
    return config, prepared


class RichReporter:
    """Progress bars per study (trials) and per trial (epochs)."""

    def __init__(self, progress, metric: str):
        self.progress, self.metric = progress, metric
        self.study_task = self.trial_task = None

    def study_started(self, study, n_trials, n_done):
        self.study_task = self.progress.add_task(f"[bold]{study}", total=n_trials, completed=n_done)
        if n_done:
            self.progress.console.print(f"{study}: resuming, {n_done} of {n_trials} trials already done", markup=False, highlight=False)

    def trial_started(self, study, number, cfg):
        if self.trial_task is not None:
            self.progress.remove_task(self.trial_task)
        extra = "".join(f" {k}={v}" for k, v in cfg.strategy_params.items())
        self.trial_task = self.progress.add_task(f"  trial {number}: {cfg.strategy}{extra} lr={cfg.lr:.2g}", total=cfg.epochs)

    def epoch_done(self, epoch, record):
        self.progress.update(self.trial_task, completed=epoch)

    def trial_ended(self, study, number, state, value, reason=""):
        if not state.startswith("confirm"):  # the bar counts the search's trials; re-runs are printed
            self.progress.advance(self.study_task)
        shown = f"val_{self.metric}={value:.4f}" if value is not None else reason
        self.progress.console.print(f"  trial {number} {state} {shown}", highlight=False, markup=False)

    def note(self, study, message):
        self.progress.console.print(f"{study}: {message}" if study else message, highlight=False, markup=False, soft_wrap=True)

    def study_ended(self, summary):
        if self.trial_task is not None:
            self.progress.remove_task(self.trial_task)
            self.trial_task = None


@click.command("run")
@click.option("--suite", required=True, help="Suite name from benchmarks.toml.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Benchmarks file (default: ./benchmarks.toml).")
@click.option("--n-trials", type=click.IntRange(min=1), help="Override the suite's n_trials.")
@click.option("--allow-leaks", is_flag=True, help="Run protocols the leak audit flags (to reproduce a paper); runs are flagged.")
@store_options
def run(suite, config_path, n_trials, allow_leaks, results_dir, storage, tracking_uri):
    """Run SUITE: an Optuna study per (dataset, backbone), every trial tracked in MLflow."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..results.tracking import Tracker
    from ..suite.runner import planned_trials, run_suite
    from ..suite.stores import Stores
    from .results import print_leaderboard

    config, prepared = prepare(suite, config_path, allow_leaks, n_trials)
    plans = prepared.studies
    stores = Stores.resolve(results_dir, storage, tracking_uri)
    stores.check(writing=True)
    metric = config.suite(suite).metric
    about = config.suite(suite).description
    console.print(styled("Suite ", (suite, "bold"), (f" ({about})" if about else "")
                         + f": {len(plans)} {'study' if len(plans) == 1 else 'studies'}, {sum(planned_trials(p) for p in plans)} trials;"
                         f" results in {stores.results_dir}" + _compute_note(config.suite(suite).params)), highlight=False)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        summaries = run_suite(plans, stores, RichReporter(progress, metric))

    console.print(styled((f"Suite {suite}", "bold"), f": per study, the search's best trial on val {metric} (one seed)"))
    for s in summaries:
        counts = ", ".join(f"{v} {k}" for k, v in sorted(s.counts.items()))
        line = f"  {s.study}: {counts}"
        if s.best_value is not None:
            best = " ".join(f"{k}={v:.1e}" if k == "lr" else f"{k}={v}" for k, v in s.best_params.items())
            line += f"; best val {metric} {s.best_value:.3f} ({best}). The recommendation: the first row below"
        console.print(line, highlight=False, markup=False)
    tracker = Tracker(stores.tracking_uri, stores.artifact_root)
    for label in dict.fromkeys(s.dataset for s in summaries):
        print_leaderboard(tracker, label, metric, suite=suite, limit=10)
    console.print(styled("Browse every run: ", ("freezebench ui", "bold"), f" --results-dir {shlex.quote(str(results_dir))}" if results_dir else ""))


def _compute_note(params: dict) -> str:
    """Where the trials compute, when the suite fixes it (device, amp, channels_last not searched)."""
    from ..engine.device import resolve_compute
    from ..suite.config import Choice, Range

    from ..records import DEFAULTS

    values = [params.get(k, DEFAULTS[k]) for k in ("device", "amp", "channels_last")]
    if any(isinstance(v, (Choice, Range)) for v in values):
        return ""
    return f"; computing on {resolve_compute(*values).describe()}"


class LineReporter:
    """Plain lines, for workers whose output goes to a log."""

    def study_started(self, study, n_trials, n_done):
        print(f"{study}: {n_done} of {n_trials} trials done", flush=True)

    def trial_started(self, study, number, cfg):
        print(f"{study}: trial {number} started ({cfg.strategy} lr={cfg.lr:.2g})", flush=True)

    def epoch_done(self, epoch, record):
        pass

    def trial_ended(self, study, number, state, value, reason=""):
        print(f"{study}: trial {number} {state} {'' if value is None else f'{value:.4f}'} {reason}".rstrip(), flush=True)

    def note(self, study, message):
        print(f"{study}: {message}" if study else message, flush=True)

    def study_ended(self, summary):
        print(f"{summary.study}: {summary.counts}", flush=True)


@click.command("worker")
@click.option("--suite", required=True, help="Suite name from benchmarks.toml.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Benchmarks file (default: ./benchmarks.toml).")
@click.option("--allow-leaks", is_flag=True, help="Run protocols the leak audit flags; runs are flagged.")
@store_options
def worker(suite, config_path, allow_leaks, results_dir, storage, tracking_uri):
    """Work on SUITE's studies alongside other workers sharing --storage (an RDB) and --tracking-uri.

    Every worker takes the next trial from the shared Optuna studies, so each trial runs once;
    they stop when the suites' n_trials are reached.
    """
    from ..suite.runner import run_suite
    from ..suite.stores import Stores

    _, prepared = prepare(suite, config_path, allow_leaks)
    stores = Stores.resolve(results_dir, storage, tracking_uri)
    stores.check(writing=True)
    run_suite(prepared, stores, LineReporter())
