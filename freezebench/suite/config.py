"""benchmarks.toml -> typed, validated suites. Every error names the file and the key."""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..records import DEFAULTS, METRICS, PARAMS

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "hyperband")


def default_pruner(sampler: str) -> str:
    """A search prunes with Hyperband unless told otherwise (measured faster to an answer as good:
    docs/performance.md, "Time to answer"); a grid is a table of every point, trained to the end."""
    return "none" if sampler == "grid" else "hyperband"


# Which trials get the trial analyses and test figures: "best" (a search trial that is the best so far of its
# case, a strategy with its own parameters: so every case's best trial has them), "all", or "none".
ANALYSES = ("best", "all", "none")


@dataclass(frozen=True)
class Choice:
    """A categorical search dimension."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class Range:
    """A numeric search dimension. For 'unit' params a negative bound counts from the number of
    units, and a missing bound means 0 (low) or n_units (high)."""

    low: float | None
    high: float | None
    log: bool = False
    step: float | None = None

    def unit_bounds(self, n_units: int) -> tuple[int, int]:
        """A unit range's bounds for a backbone of ``n_units`` units; negative bounds count from the end."""
        low = 0 if self.low is None else int(self.low)
        high = n_units if self.high is None else int(self.high)
        return (low + n_units if low < 0 else low, high + n_units if high < 0 else high)


@dataclass(frozen=True)
class DatasetRef:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    alias: str | None = None

    @property
    def label(self) -> str:
        return self.alias or self.name


@dataclass(frozen=True)
class BackboneRef:
    name: str
    weights: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Confirm:
    """The confirmation set: after the search, these configurations are trained again with other seeds and
    ranked by their mean. ``top`` best trials on validation, plus (``references``) the best trial of each
    strategy searched (linear probing and full fine-tuning among them when searched). ``seeds`` extra seeds:
    a count (the first integers other than the trial's own seed) or the seeds themselves. ``resplit``: true,
    each extra seed also draws the training and validation images again from their pool (the test images
    stay), so the mean is over several validation sets, not one (``protocols.resplit``); ``"folds"``, the i-th
    extra seed validates on the i-th of the training images' disjoint folds of the validation set's size, and
    trains on the rest of train+val (``protocols.fold_resplit``): with as many seeds as folds, inner
    cross-validation over train+val. ``ensemble``: every re-run
    keeps its trained model (as does every search trial that could still be confirmed,
    ``confirmation.keeps_model``), so that the recommended configuration's seeds can be exported and used
    as one model (their class probabilities averaged); false keeps one model per configuration."""

    top: int = 3
    references: bool = True
    seeds: int | tuple[int, ...] | str = 2  # or RESPLIT_FOLDS: one per validation fold
    resplit: bool | str = False  # or RESPLIT_FOLDS
    ensemble: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.top or self.references) and bool(self.seeds)

    def seeds_for(self, own: int, folds: int | None = None) -> tuple[int, ...]:
        """The extra seeds of a configuration first trained with seed ``own`` (``seeds = "folds"``: one per
        validation fold, ``folds`` of them)."""
        if isinstance(self.seeds, tuple):
            return tuple(s for s in self.seeds if s != own)
        n = self.seeds if isinstance(self.seeds, int) else folds
        if n is None:
            raise ValueError('seeds = "folds" needs the number of folds')
        return tuple(s for s in range(n + 1) if s != own)[:n]


OFF = Confirm(top=0, references=False, seeds=0)
RESPLIT_FOLDS = "folds"  # confirm.resplit: the extra seeds validate on disjoint folds of the training images


@dataclass(frozen=True)
class Suite:
    name: str
    datasets: tuple[DatasetRef, ...]
    backbones: tuple[BackboneRef, ...]
    params: dict[str, Any]  # name -> fixed value | Choice | Range
    n_trials: int = 10
    metric: str = "f1"
    sampler: str = "tpe"
    startup_trials: int | None = None  # tpe: trials drawn at random before it models the results; None: Optuna's 10
    pruner: str = "none"  # load_config fills in default_pruner(sampler) when a suite does not say
    seed: int = 0
    description: str = ""
    data_root: str | None = None
    prune_on: str = "loss"
    confirm: Confirm = Confirm()  # on by default
    analyses: str = "best"  # one of ANALYSES


@dataclass(frozen=True)
class Config:
    path: Path
    suites: dict[str, Suite]

    def suite(self, name: str) -> Suite:
        if name not in self.suites:
            raise UserError(
                f"{self.path}: no suite named {name!r}. Suites defined there: {', '.join(self.suites) or 'none'}."
            )
        return self.suites[name]


SUITE_KEYS = {"description", "datasets", "backbones", "n_trials", "metric", "sampler", "startup_trials", "pruner", "prune_on", "seed",
              "params", "data_root", "confirm", "analyses"}


def default_config_path() -> Path:
    """--config, else $FREEZEBENCH_CONFIG, else ./benchmarks.toml, else the copy shipped in the package."""
    env = os.environ.get("FREEZEBENCH_CONFIG")
    if env:
        return Path(env)
    local = Path("benchmarks.toml")
    if local.is_file():
        return local
    return Path(str(resources.files("freezebench") / "default_benchmarks.toml"))


def load_config(path: str | Path | None = None, strategy_params: dict[str, str] | None = None) -> Config:
    """Parse and validate a benchmarks file.

    ``strategy_params`` maps extra parameter names declared by installed strategies to the
    strategy that declares them (so ``k`` is accepted); unknown names are errors.
    """
    path = Path(path) if path is not None else default_config_path()
    if not path.is_file():
        raise UserError(f"Config file not found: {path}. Pass --config PATH or create benchmarks.toml.")
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{path}: saved as UTF-16 (Windows \"Unicode\"); TOML is UTF-8. Save it again as UTF-8.")
    try:  # a UTF-8 byte-order mark (Windows editors write one) is read past, not as TOML
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a UTF-8 text file ({exc})") from None
    return parse_config(data, path, strategy_params or {})


class _Ctx:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, msg: str):
        raise UserError(f"{self.path}: {key}: {msg}")


def parse_config(data: dict, path: Path, strategy_params: dict[str, str]) -> Config:
    ctx = _Ctx(path)
    unknown = set(data) - {"defaults", "suites"}
    if unknown:
        ctx.fail(sorted(unknown)[0], "unknown top-level table; expected [defaults] and [suites.NAME]")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        ctx.fail("defaults", "must be a table")
    suites_raw = data.get("suites")
    if not isinstance(suites_raw, dict) or not suites_raw:
        ctx.fail("suites", "define at least one suite as a [suites.NAME] table")
    suites = {}
    if not isinstance(defaults.get("params", {}), dict):
        ctx.fail("defaults.params", "must be a table of parameters, e.g. [defaults.params]")
    for name, raw in suites_raw.items():
        if not isinstance(raw, dict):
            ctx.fail(f"suites.{name}", "must be a table")
        _check_name(ctx, f"suites.{name}", name, "a suite name")
        if not isinstance(raw.get("params", {}), dict):
            ctx.fail(f"suites.{name}.params", f"must be a table of parameters ([suites.{name}.params]), got {raw['params']!r}")
        merged = {**{k: v for k, v in defaults.items() if k != "params"}, **raw}
        merged["params"] = {**defaults.get("params", {}), **raw.get("params", {})}
        suites[name] = _parse_suite(ctx, name, merged, strategy_params)
    return Config(path=path, suites=suites)


def _parse_suite(ctx: _Ctx, name: str, raw: dict, strategy_params: dict[str, str]) -> Suite:
    key = f"suites.{name}"
    for k in raw:
        if k not in SUITE_KEYS:
            ctx.fail(f"{key}.{k}", f"unknown key; expected one of: {', '.join(sorted(SUITE_KEYS))}")
    for required in ("datasets", "backbones"):
        if required not in raw:
            ctx.fail(f"{key}.{required}", "is required (a list of names)")
    n_trials = raw.get("n_trials", 10)
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        ctx.fail(f"{key}.n_trials", f"must be an integer >= 1, got {n_trials!r}")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        ctx.fail(f"{key}.seed", f"must be an integer >= 0, got {seed!r}")
    startup = raw.get("startup_trials")
    if startup is not None:
        if not isinstance(startup, int) or isinstance(startup, bool) or startup < 1:
            ctx.fail(f"{key}.startup_trials", f"must be an integer >= 1 (trials drawn at random before TPE models the "
                                              f"results), got {startup!r}")
        if raw.get("sampler", Suite.sampler) != "tpe":
            ctx.fail(f"{key}.startup_trials", f"applies to the tpe sampler only (this suite's sampler is "
                                              f"{raw.get('sampler')!r}): remove it")
    for k, allowed in (("metric", METRICS), ("sampler", SAMPLERS), ("pruner", PRUNERS), ("prune_on", ("loss", "metric")),
                       ("analyses", ANALYSES)):
        if k in raw and raw[k] not in allowed:
            ctx.fail(f"{key}.{k}", f"must be one of {', '.join(allowed)}; got {raw[k]!r}")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        ctx.fail(f"{key}.params", "must be a table")
    if raw.get("sampler") == "grid":
        for p, v in params.items():
            if isinstance(v, dict) and (v.get("log") or not all(isinstance(v.get(b, 0), int) for b in ("low", "high"))):
                ctx.fail(f"{key}.params.{p}", "the grid sampler needs a list of values here (or an integer range)")
    if "strategy" not in params:
        ctx.fail(f"{key}.params.strategy", "is required: a strategy name or a list of names to search")
    if "lr" not in params:
        ctx.fail(f"{key}.params.lr", "is required: a number, a list, or {low = ..., high = ..., log = true}")
    heads, inits = (_as_values(params.get(k, DEFAULTS[k])) for k in ("head", "head_init"))
    if "mlp" in heads and "linear_probe" in inits:
        ctx.fail(f"{key}.params.head_init", "'linear_probe' fits a linear head first; it cannot start the 'mlp' head "
                 "(use head = 'linear', or head_init = 'random')")
    datasets = tuple(_dataset_ref(ctx, f"{key}.datasets", i, v) for i, v in enumerate(_list(ctx, f"{key}.datasets", raw["datasets"])))
    backbones = tuple(_backbone_ref(ctx, f"{key}.backbones", i, v) for i, v in enumerate(_list(ctx, f"{key}.backbones", raw["backbones"])))
    _unique(ctx, f"{key}.datasets", [d.label for d in datasets], "name or alias (it names the study and the MLflow experiment)",
            "give each an alias")
    _unique(ctx, f"{key}.backbones", [b.name for b in backbones], "backbone (it names the study)", "list each backbone once")
    return Suite(
        name=name,
        description=str(raw.get("description", "")),
        datasets=datasets,
        backbones=backbones,
        params={p: _param(ctx, f"{key}.params.{p}", p, v, strategy_params) for p, v in params.items()},
        n_trials=n_trials,
        metric=raw.get("metric", "f1"),
        sampler=raw.get("sampler", Suite.sampler),
        startup_trials=startup,
        pruner=raw.get("pruner", default_pruner(raw.get("sampler", Suite.sampler))),
        seed=seed,
        data_root=_optional_str(ctx, f"{key}.data_root", raw.get("data_root")),
        prune_on=raw.get("prune_on", "loss"),
        analyses=raw.get("analyses", Suite.analyses),
        **_confirm(ctx, f"{key}.confirm", raw.get("confirm")),
    )


def _as_values(value) -> list:
    """The values a suite parameter may take (a list's items, or the one value)."""
    return list(value) if isinstance(value, list) else [value]


def _confirm(ctx: _Ctx, key: str, value) -> dict:
    """confirm = { top = 3, references = true, seeds = 2 } (the default), seeds = [5, 6], or false (off)."""
    if value is None:
        return {}
    if value is False:
        return {"confirm": OFF}
    shape = ("a table { top = 3, references = true, seeds = 2, resplit = false, ensemble = true }, "
             "or false to switch confirmation off")
    if not isinstance(value, dict):
        ctx.fail(key, f"must be {shape}, got {value!r}")
    for k in set(value) - {"top", "references", "seeds", "resplit", "ensemble"}:
        ctx.fail(f"{key}.{k}", f"unknown key; expected top, references, seeds, resplit or ensemble ({shape})")
    default = Confirm()
    top, references, seeds, resplit, ensemble = (
        value.get("top", default.top), value.get("references", default.references), value.get("seeds", default.seeds),
        value.get("resplit", default.resplit), value.get("ensemble", default.ensemble))

    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not count(top):
        ctx.fail(f"{key}.top", f"must be an integer >= 0 (0: only the references), got {top!r}")
    if not isinstance(references, bool):
        ctx.fail(f"{key}.references", f"must be true or false, got {references!r}")
    if not isinstance(resplit, bool) and resplit != RESPLIT_FOLDS:
        ctx.fail(f"{key}.resplit", f"must be true (draw the training and validation images again for each extra seed), "
                                   f"false, or \"{RESPLIT_FOLDS}\" (each extra seed validates on another fold of the "
                                   f"training images), got {resplit!r}")
    if not isinstance(ensemble, bool):
        ctx.fail(f"{key}.ensemble", f"must be true or false (keep every seed's trained model), got {ensemble!r}")
    if seeds == RESPLIT_FOLDS:
        if resplit != RESPLIT_FOLDS:
            ctx.fail(f"{key}.seeds", f"\"{RESPLIT_FOLDS}\" (one extra seed per validation fold) needs resplit = \"{RESPLIT_FOLDS}\"; "
                                     f"got resplit = {_toml(resplit)}")
    elif isinstance(seeds, list):
        if not seeds or not all(map(count, seeds)) or len(set(seeds)) != len(seeds):
            ctx.fail(f"{key}.seeds", f"must be a count of extra seeds or a list of distinct integers >= 0, got {seeds!r}")
        seeds = tuple(seeds)
    elif not count(seeds) or seeds < 1:
        ctx.fail(f"{key}.seeds", f"must be a count of extra seeds (>= 1) or a list of seeds, got {seeds!r}; "
                                 "to switch confirmation off write confirm = false")
    if not top and not references:
        ctx.fail(key, "confirms nothing with top = 0 and references = false; write confirm = false to switch it off")
    return {"confirm": Confirm(top, references, seeds, resplit, ensemble)}


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=@ -]*$")


def _check_name(ctx: _Ctx, key: str, name: str, what: str) -> None:
    """Suite names and aliases name experiments, studies and files: no path separators, no leading dot."""
    if not NAME.match(name) or ".." in name or len(name) > 100:
        ctx.fail(key, f"{what} must start with a letter or digit and hold only letters, digits, spaces and "
                      f"_ . + = @ - (no '/', '\\' or '..', at most 100 characters); got {name!r}")


def _unique(ctx: _Ctx, key: str, labels: list[str], what: str, fix: str) -> None:
    """Two entries with one label would share one study: the second would silently resume the first."""
    for i, label in enumerate(labels):
        if label in labels[:i]:
            ctx.fail(f"{key}[{i}]", f"has the same {what} as {key}[{labels.index(label)}]: {label!r}; {fix}.")


def _optional_str(ctx: _Ctx, key: str, value):
    if value is not None and not isinstance(value, str):
        ctx.fail(key, f"must be a string (a path), got {value!r}")
    return value


def _list(ctx: _Ctx, key: str, value) -> list:
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list) or not value:
        ctx.fail(key, "must be a non-empty list")
    return value


def _dataset_ref(ctx: _Ctx, key: str, i: int, value) -> DatasetRef:
    if isinstance(value, str):
        return DatasetRef(value)
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        options = {k: v for k, v in value.items() if k not in ("name", "alias")}
        alias = value.get("alias")
        if alias is not None and not isinstance(alias, str):
            ctx.fail(f"{key}[{i}].alias", "must be a string")
        if alias is not None:
            _check_name(ctx, f"{key}[{i}].alias", alias, "an alias")
        return DatasetRef(value["name"], options, alias)
    ctx.fail(f"{key}[{i}]", 'must be a dataset name or a table {name = "...", <options>}')


def _backbone_ref(ctx: _Ctx, key: str, i: int, value) -> BackboneRef:
    if isinstance(value, str):
        return BackboneRef(value)
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        extra = set(value) - {"name", "weights", "sha256"}
        if extra:
            ctx.fail(f"{key}[{i}].{sorted(extra)[0]}", "unknown key; expected name, weights, sha256")
        for k in ("weights", "sha256"):
            if k in value and not isinstance(value[k], str):
                ctx.fail(f"{key}[{i}].{k}", "must be a string")
        if "sha256" in value and not re.fullmatch(r"[0-9a-fA-F]{64}", value["sha256"]):
            ctx.fail(f"{key}[{i}].sha256", f"must be 64 hexadecimal digits (sha256sum's output), got {value['sha256']!r}")
        return BackboneRef(value["name"], value.get("weights"), value.get("sha256"))
    ctx.fail(f"{key}[{i}]", 'must be a backbone name or a table {name = "...", weights = "path", sha256 = "..."}')


def _check_value(ctx: _Ctx, key: str, name: str, value):
    if name not in PARAMS:  # a strategy's own parameter (e.g. k): int or float
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            ctx.fail(key, f"must be a number or a string, got {value!r}")
        return value
    spec = PARAMS[name]
    if not spec.accepts(value):
        ctx.fail(key, f"must be {spec.expects}, got {value!r}")
    return float(value) if spec.type is float else value


def _param(ctx: _Ctx, key: str, name: str, value, strategy_params: dict[str, str]):
    if name not in PARAMS and name not in strategy_params:
        known = sorted(set(PARAMS) | set(strategy_params))
        ctx.fail(key, f"unknown parameter {name!r}; known parameters: {', '.join(known)}")
    if isinstance(value, list):
        if not value:
            ctx.fail(key, "an empty list offers nothing to search")
        return Choice(tuple(_check_value(ctx, f"{key}[{i}]", name, v) for i, v in enumerate(value)))
    if isinstance(value, dict):
        extra = set(value) - {"low", "high", "log", "step"}
        bounded = name not in PARAMS  # a strategy's unit range may omit bounds: 0..n_units
        if extra or (not bounded and ("low" not in value or "high" not in value)):
            ctx.fail(key, "a range is a table {low = ..., high = ..., log = true|false, step = ...}")
        if name in PARAMS and PARAMS[name].type not in (int, float):
            ctx.fail(key, f"{name} cannot be a range; give a value or a list")
        low, high = value.get("low"), value.get("high")
        for k, v in (("low", low), ("high", high)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                ctx.fail(f"{key}.{k}", f"must be a number, got {v!r}")
        if name in PARAMS:
            _check_value(ctx, f"{key}.low", name, low)
            _check_value(ctx, f"{key}.high", name, high)
        if low is not None and high is not None and (low >= 0) == (high >= 0) and low > high:
            # (a unit range's negative bounds count from the end: checked against each backbone later)
            ctx.fail(key, f"low ({low}) is greater than high ({high})")
        step = value.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0):
            ctx.fail(f"{key}.step", f"must be a number > 0, got {step!r}")
        if step is not None and value.get("log"):
            ctx.fail(f"{key}.step", "a log range takes no step")
        log = value.get("log", False)
        if not isinstance(log, bool):
            ctx.fail(f"{key}.log", "must be true or false")
        if log and (low is None or low <= 0):
            ctx.fail(f"{key}.low", "must be > 0 for a log range")
        return Range(low, high, log, value.get("step"))
    return _check_value(ctx, key, name, value)



def _toml(value) -> str:
    """A TOML literal for the values a suite holds (strings, numbers, booleans, lists, inline tables)."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items() if v is not None) + " }"
    return _toml(str(value))


def suite_toml(suite: Suite) -> str:
    """The suite as it ran, every default filled in, as TOML: ``freezebench report`` shows it, and
    ``load_config`` reads it back to the same suite."""
    def spec(v):
        if isinstance(v, Choice):
            return list(v.values)
        if isinstance(v, Range):
            return {"low": v.low, "high": v.high, **({"log": True} if v.log else {}), "step": v.step}
        return v

    datasets = [{"name": d.name, "alias": d.alias, **d.options} for d in suite.datasets]
    backbones = [{"name": b.name, "weights": b.weights, "sha256": b.sha256} for b in suite.backbones]
    c = suite.confirm
    key = suite.name if re.fullmatch(r"[A-Za-z0-9_-]+", suite.name) else _toml(suite.name)
    lines = [f"[suites.{key}]", f"description = {_toml(suite.description)}",
             f"datasets = {_toml(datasets)}", f"backbones = {_toml(backbones)}",
             *(f"{k} = {_toml(getattr(suite, k))}" for k in ("n_trials", "metric", "sampler", "pruner", "prune_on", "seed",
                                                                "analyses")),
             *([f"data_root = {_toml(suite.data_root)}"] if suite.data_root else []),
             *([f"startup_trials = {suite.startup_trials}"] if suite.startup_trials is not None else []),
             "confirm = " + (_toml({"top": c.top, "references": c.references, "seeds": c.seeds, "resplit": c.resplit,
                                    "ensemble": c.ensemble})
                            if c.enabled else "false"),
             "", f"[suites.{key}.params]",
             *(f"{k} = {_toml(spec(v))}" for k, v in suite.params.items())]
    return "\n".join(lines) + "\n"
