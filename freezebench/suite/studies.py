"""Optuna studies shared safely by one or many processes: heartbeats (a killed trial is failed
and run again), one parent MLflow run per study (made by the process that creates the study),
and counting which trials are finished."""

from __future__ import annotations

import inspect
import os
import time
import warnings
from typing import Callable

import optuna

from ..errors import StoreFault, UserError, fault_of

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: stable enough for us
PARENT_ATTR = "mlflow_parent_run_id"
SURPLUS_ATTR = "freezebench.surplus"
RETRY_ATTR = "freezebench.retry_of"  # an interrupted trial's number, on the trial that runs its settings again
MAX_RETRIES = 3  # a trial whose process keeps dying (out of memory, say) is not retried forever
SETTINGS_ATTR = "freezebench.settings"  # the trial's whole configuration, canonical JSON: how repeats are found
CASE_ATTR = "freezebench.case"  # the trial's strategy with its own parameters (``analysis.case_name``)
AMOUNTS_ATTR = "freezebench.amounts_to"  # the reference strategy a finished trial's plan amounts to (``FreezePlan.amounts_to``)
REPEAT_ATTR = "freezebench.repeat_of"  # on a trial whose settings an earlier trial had: it trained nothing
REPEAT_LIMIT = 25  # this many proposals in a row that all repeat earlier settings: the space is used up


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace) in seconds: a RUNNING trial without a heartbeat for `grace` is stale."""
    text = os.environ.get("FREEZEBENCH_HEARTBEAT_GRACE", "60")
    try:
        grace = int(text)
    except ValueError:
        grace = 0
    if grace < 2:
        raise UserError(f"FREEZEBENCH_HEARTBEAT_GRACE={text!r}: give whole seconds, at least 2 (the default is 60).")
    return max(1, min(10, grace // 3)), grace


def storage(url: str) -> optuna.storages.BaseStorage:
    interval, grace = heartbeat_settings()
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            # Optuna fills the URL as a str.format template: braces in a path or password are literal here
            return optuna.storages.RDBStorage(url.replace("{", "{{").replace("}", "}}"), heartbeat_interval=interval, grace_period=grace, engine_kwargs=engine,
                                              **{_RETRY_KEYWORD: _retry_stale()})
        except ImportError as exc:
            hint = ' (pip install "freezebench[postgres]")' if url.startswith("postgres") else ""
            raise UserError(f"No database driver for the Optuna storage {url.split('@')[-1]}: {exc.__cause__ or exc}{hint}.") from None
        except Exception as exc:  # another worker creating the schema right now; or unreachable, bad credentials
            if fault_of(exc):
                raise StoreFault(f"Cannot write the Optuna storage {url.split('@')[-1]}: {fault_of(exc)}. Fix the cause, "
                                 "then run again.") from None
            if attempt == 4:
                raise UserError(f"Cannot open the Optuna storage {url.split('@')[-1]}: {type(exc).__name__}: {exc}") from None
            time.sleep(1 + attempt)


# Optuna 4.9 renamed the keyword (the old one warns, and goes in 6.0)
_RETRY_KEYWORD = ("heartbeat_stale_trial_callback"
                  if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
                  else "failed_trial_callback")


def _retry_stale():
    """Optuna's callback that queues a stale (killed) trial's settings again, once per stale trial: only
    the process whose update failed the trial calls it, so concurrent workers never queue it twice."""
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    return retry(max_retry=MAX_RETRIES)


def retry_interrupted(study: optuna.Study, trial: optuna.Trial) -> None:
    """Queue an interrupted trial's settings (Ctrl-C, SIGTERM) so that the next run tries them first."""
    study.enqueue_trial(dict(trial.params), user_attrs={RETRY_ATTR: trial.number})


def live_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials running now (here or in another process, or killed a moment ago) or queued to run."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.state.name in ("RUNNING", "WAITING") and not is_surplus(t) and not is_repeat(t)]


def is_surplus(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial started past the study's cap by a worker that lost the race for the last slot."""
    return bool(trial.user_attrs.get(SURPLUS_ATTR))


def is_repeat(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial whose settings an earlier trial of the study already had: it trained nothing, and is left out
    of every count (the study still gets its number of distinct trials)."""
    return REPEAT_ATTR in trial.user_attrs


def settings_key(config) -> str:
    """A trial configuration (a ``TrialConfig``) as canonical JSON: equal keys, equal training."""
    import json

    return json.dumps(config.as_flat_dict(), sort_keys=True, default=str)


def earlier_with(study: optuna.Study, number: int, key: str) -> optuna.trial.FrozenTrial | None:
    """The first earlier-numbered trial with these settings that finished, or is running now (None when there is
    none). Only lower numbers count: two workers proposing the same settings at once cannot both step aside
    (the lower-numbered one trains; at worst, in a race, both do)."""
    for t in study.get_trials(deepcopy=False):
        if t.number < number and t.user_attrs.get(SETTINGS_ATTR) == key and not is_repeat(t) \
                and (is_finished(t) or (t.state.name == "RUNNING" and not is_surplus(t))):
            return t
    return None


def repeats_in_a_row(study: optuna.Study) -> int:
    """How many of the study's latest finished proposals in a row repeated earlier settings."""
    count = 0
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number, reverse=True):
        if t.state.name in ("RUNNING", "WAITING") or is_surplus(t):
            continue
        if not is_repeat(t):
            break
        count += 1
    return count


def unanswered_reference(study: optuna.Study, strategy: str, references: tuple[str, ...]) -> bool:
    """Whether ``strategy`` is one of ``references`` and none of its trials has finished yet: such a trial
    is not pruned (the recommendation must be compared with it). Once one finished, the others prune as any."""
    if strategy not in references:
        return False
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return not any(t.params.get("strategy", t.user_attrs.get("strategy")) == strategy and not is_repeat(t) for t in done)


def is_finished(trial: optuna.trial.FrozenTrial) -> bool:
    """Complete, pruned, or failed for a recorded reason; an interrupted or killed trial is run again."""
    if is_surplus(trial) or is_repeat(trial):
        return False
    name = trial.state.name
    return name in ("COMPLETE", "PRUNED") or (name == "FAIL" and "fail_reason" in trial.user_attrs)


def open_study(name: str, url: str, sampler, pruner, direction: str, make_parent: Callable[[], str],
               timeout: float = 120.0) -> tuple[optuna.Study, str]:
    """Create or load the study, and its parent run id.

    Only the process whose ``create_study`` succeeds makes the parent run and records its id on the
    study; the others wait for that id, so concurrent workers never make two parent runs.
    """
    store = storage(url)
    try:
        study = optuna.create_study(study_name=name, storage=store, sampler=sampler, pruner=pruner, direction=direction)
        creator = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=store, sampler=sampler, pruner=pruner)
        creator = False
    parent = study.user_attrs.get(PARENT_ATTR)
    if parent is None and creator:
        parent = make_parent()
        study.set_user_attr(PARENT_ATTR, parent)
    deadline = time.time() + timeout
    while parent is None:
        if time.time() > deadline:  # the creator died before recording it
            parent = make_parent()
            study.set_user_attr(PARENT_ATTR, parent)
            break
        time.sleep(0.5)
        parent = optuna.load_study(study_name=name, storage=store).user_attrs.get(PARENT_ATTR)
    return study, parent


def fail_stale(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Fail RUNNING trials whose process stopped beating (killed, even with kill -9); return them."""
    optuna.storages.fail_stale_trials(study)
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL" and "fail_reason" not in t.user_attrs]


def claims_slot(trial: optuna.Trial, n: int) -> bool:
    """Whether ``trial`` is one of the study's ``n`` trials, decided by trial number.

    Optuna numbers trials under a lock on the study row, so every lower-numbered trial exists
    when this one starts. Counting the live ones below it gives each worker the same answer:
    when two workers start a trial for the last slot at once, exactly one of them gets it.
    """
    live = ("RUNNING", "WAITING")
    ahead = sum(t.number < trial.number and (is_finished(t) or (t.state.name in live and not is_surplus(t)))
                for t in trial.study.get_trials(deepcopy=False))
    return ahead < n


def release_surplus(trial: optuna.Trial) -> None:
    """Mark ``trial`` as surplus (it trains nothing and is left out of every count) and give its grid
    point back: GridSampler counts a finished trial's point as visited only for a matching search space."""
    trial.set_user_attr(SURPLUS_ATTR, True)
    if "grid_id" in trial.storage.get_trial_system_attrs(trial._trial_id):
        trial.storage.set_trial_system_attr(trial._trial_id, "search_space", {})


class StopAtTrials:
    """Stop a worker once ``n`` trials are finished or running, across every process on the study."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        if sum(is_finished(t) or t.state.name == "RUNNING" for t in trials) >= self.n:
            study.stop()
