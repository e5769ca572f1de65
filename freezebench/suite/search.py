"""Optuna: samplers, pruners, and turning a suite's parameter space into a trial configuration."""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable

import optuna

from ..errors import UserError
from ..plugins import Registry
from ..records import DEFAULTS, HIGHER_IS_BETTER, TrialConfig
from .config import Choice, Range, Suite


def grid_space(suite: Suite, strategies: Registry, n_units: dict[str, int]) -> dict[str, list]:
    """Every searched parameter as a list of values (integer and unit ranges expanded)."""
    unit_params = {p.name for e in strategies.entries() for p in e.obj.params if p.kind == "unit"}
    space = {}
    for name, spec in suite.params.items():
        if isinstance(spec, Choice):
            space[name] = list(spec.values)
        elif isinstance(spec, Range):
            if name in unit_params:
                if len(n_units) != 1:
                    raise UserError(f"suites.{suite.name}.params.{name}: a grid over unit ranges needs one fixed granularity")
                low, high = spec.unit_bounds(next(iter(n_units.values())))
                space[name] = list(range(low, high + 1))
            else:  # config validation allows only integer ranges with the grid sampler
                space[name] = list(range(int(spec.low), int(spec.high) + 1, int(spec.step or 1)))
    return space


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number`` in a study seeded with ``seed`` (independent streams, numpy's SeedSequence)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class TrialSeeded(optuna.samplers.BaseSampler):
    """A sampler whose randomness comes from (suite seed, trial number), not from the process.

    Optuna's seeded samplers start their random sequence anew in every process, so a resumed run,
    a raised ``--n-trials`` or a second worker on the same study proposes trial 0's, 1's, ...
    settings again. Here each trial gets a sampler of its own, seeded by its trial number (unique
    in the study, given out by the storage): every worker and every resume continues the search,
    and a run from scratch is still reproducible. The samplers still see the whole study's history.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self._make, self._seed = make, seed
        self._by_trial: dict[int, optuna.samplers.BaseSampler] = {}

    def _for(self, trial) -> optuna.samplers.BaseSampler:
        sampler = self._by_trial.get(trial.number)
        if sampler is None:
            sampler = self._by_trial[trial.number] = self._make(trial_seed(self._seed, trial.number))
        return sampler

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._by_trial.pop(trial.number, None)

    def reseed_rng(self) -> None:  # Optuna calls this for n_jobs > 1; our seeds come from trial numbers
        pass


class SeededGrid(optuna.samplers.GridSampler):
    """Optuna's grid sampler with its pick among the unvisited points seeded per trial number, so two
    workers starting at once pick different points. The grid's order stays the suite's seed: a grid
    point's id (stored on each trial) means the same point in every process."""

    def __init__(self, search_space, seed: int):
        super().__init__(search_space, seed=seed)
        self._suite_seed = seed

    def before_trial(self, study, trial) -> None:
        self._rng.rng.seed(trial_seed(self._suite_seed, trial.number))
        super().before_trial(study, trial)


def make_sampler(suite: Suite, strategies: Registry | None = None, n_units: dict[str, int] | None = None) -> optuna.samplers.BaseSampler:
    if suite.sampler == "grid":
        return SeededGrid(grid_space(suite, strategies, n_units or {}), suite.seed)

    def make(seed: int) -> optuna.samplers.BaseSampler:
        if suite.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        startup = {} if suite.startup_trials is None else {"n_startup_trials": suite.startup_trials}
        return optuna.samplers.TPESampler(seed=seed, **startup)

    return TrialSeeded(make, suite.seed)


def grid_size(suite: Suite, strategies: Registry, n_units: dict[str, int]) -> int | None:
    """Number of distinct settings on a grid suite's grid (its trials are capped at this), else None. Grid
    points that differ only in a parameter their strategy does not read (``k`` for ``linear_probe``) are
    one setting: the second is a repeat, and is not trained."""
    if suite.sampler != "grid":
        return None
    space = grid_space(suite, strategies, n_units)
    points = math.prod(len(v) for v in space.values())
    if points > 1_000_000:  # too many to enumerate: the point count (repeats are still never trained)
        return points
    own = {e.name: {p.name for p in e.obj.params} for e in strategies.entries()}
    anyone = set().union(*own.values()) if own else set()
    fixed = suite.params.get("strategy")
    names = list(space)
    distinct = set()
    for point in itertools.product(*space.values()):
        values = dict(zip(names, point))
        reads = own.get(values.get("strategy", fixed), set())
        distinct.add(tuple((k, v) for k, v in values.items() if k not in anyone or k in reads))
    return len(distinct)


# On 50-500 validation images one epoch's value is noisy: the median pruner waits for 5 finished trials and
# 2 epochs, and (PatientPruner) prunes only after 2 more epochs without improvement, not on one bad epoch.
MEDIAN_STARTUP_TRIALS, MEDIAN_WARMUP_EPOCHS, PATIENCE_EPOCHS = 5, 2, 2


def make_pruner(suite: Suite) -> optuna.pruners.BasePruner:
    if suite.pruner == "median":
        return optuna.pruners.PatientPruner(
            optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=MEDIAN_WARMUP_EPOCHS),
            patience=PATIENCE_EPOCHS)
    if suite.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def direction(metric: str) -> str:
    return "maximize" if HIGHER_IS_BETTER[metric] else "minimize"


def _suggest(trial: optuna.Trial, name: str, spec: Any, n_units: int | None = None, floor: int | None = None):
    if isinstance(spec, Choice):
        return trial.suggest_categorical(name, list(spec.values))
    if isinstance(spec, Range):
        low, high = spec.low, spec.high
        if n_units is not None:
            low, high = spec.unit_bounds(n_units)
            if floor is not None:  # e.g. a window's end must not be below its start
                low = min(max(low, floor), high)
            return trial.suggest_int(name, low, high)
        if isinstance(low, int) and isinstance(high, int) and not spec.log and (spec.step is None or float(spec.step).is_integer()):
            return trial.suggest_int(name, low, high, step=int(spec.step or 1))
        return trial.suggest_float(name, float(low), float(high), log=spec.log, step=spec.step)
    return spec


def suggest_config(trial: optuna.Trial, suite: Suite, strategies: Registry, n_units: int | dict[str, int]) -> TrialConfig:
    """Sample one trial's configuration. Searched values become Optuna params; fixed ones user attrs."""
    values: dict[str, Any] = {}
    for name in ("strategy", "lr", *DEFAULTS):
        spec = suite.params.get(name, DEFAULTS.get(name))
        values[name] = _suggest(trial, name, spec)
    strategy = strategies.get(values["strategy"])
    n = n_units[values["granularity"]] if isinstance(n_units, dict) else n_units
    strategy_params = {}
    for p in strategy.params:
        spec = suite.params.get(p.name)
        if spec is None:
            spec = p.default if p.default is not None else (Range(0, n) if p.kind == "unit" else None)
        if spec is None:
            continue
        floor = strategy_params.get(p.after) if p.after else None
        strategy_params[p.name] = _suggest(trial, p.name, spec, n if p.kind == "unit" else None, floor)
    for name, value in {**values, **strategy_params}.items():
        if name not in trial.params:
            trial.set_user_attr(name, value)
    return TrialConfig(metric=suite.metric, strategy_params=strategy_params, **values)
