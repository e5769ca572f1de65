"""Prepare a suite: check every name, option, file and unit, load the datasets, make their
splits and audit them for leaks, all before anything is written."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import plugins
from ..backbone import BackboneSpec, WeightsRequest
from ..dataset import ImageDataset
from ..engine.augment import augment_array
from ..engine.device import resolve_compute
from ..engine.units import with_granularity
from ..errors import UserError
from ..imagefiles import sizes_ahead
from ..records import DEFAULTS
from ..results import layout
from ..strategy import parse_window
from ..weights import is_url
from .config import RESPLIT_FOLDS, BackboneRef, Choice, Config, DatasetRef, Range, Suite
from .leakage import LeakReport
from .protocols import PROTOCOL_KEYS, SplitProtocol, apply_protocol, validation_folds


@dataclass
class StudyPlan:
    suite: Suite
    dataset_ref: DatasetRef
    dataset: ImageDataset
    backbone_ref: BackboneRef
    backbone: BackboneSpec
    units: dict[str, list[str]]  # granularity -> unit names
    protocol: SplitProtocol = field(default_factory=SplitProtocol)
    leaks: LeakReport = field(default_factory=LeakReport)
    fold: int | None = None
    validation_folds: list | None = None  # confirm.resplit = "folds": the folds its confirmation validates on

    @property
    def name(self) -> str:
        return layout.study_name(self.suite.name, self.dataset_ref.label, self.backbone_ref.name, self.fold)


@dataclass
class PreparedSuite:
    """A suite with every name checked and every dataset loaded and split; nothing written yet."""

    studies: list[StudyPlan]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (dataset, why)
    audits: list[tuple[str, LeakReport, bool]] = field(default_factory=list)  # (dataset, report, allowed)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (backbone, what loading its weights said)


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
    if ref_name not in plugins.datasets():
        raise UserError(f"{where}: {plugins.datasets().unknown_message(ref_name)}")
    dspec = plugins.datasets().get(ref_name)
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
    strategies = plugins.strategies()
    spec = suite.params["strategy"]
    names = spec.values if isinstance(spec, Choice) else (spec,)
    for name in names:
        if name not in strategies:
            raise UserError(f"{where}.params.strategy: {strategies.unknown_message(name)}")
        why = getattr(strategies.get(name), "unavailable", lambda: "")()
        if why:
            raise UserError(f"{where}.params.strategy: strategy {name!r} cannot run here: {why}")
    for device in _values(suite.params.get("device", DEFAULTS["device"])):  # before anything is loaded or written
        for amp in _values(suite.params.get("amp", DEFAULTS["amp"])):
            try:
                resolve_compute(device, amp)
            except UserError as exc:
                raise UserError(f"{where}.params: {exc}") from None
    root = data_root(suite, base)
    prepared = PreparedSuite([])

    datasets = []
    for i, ref in enumerate(suite.datasets):
        key = f"{where}.datasets[{i}]"
        protocol = SplitProtocol.from_options({k: v for k, v in ref.options.items() if k in PROTOCOL_KEYS}, key)
        dspec, options = _plugin_options(ref.name, ref.options, key, base, root)
        missing = dspec.available(**options) if dspec.available else None
        if missing:
            prepared.skipped.append((ref.label, missing))
            continue

        def load_external(table: dict, _key=key) -> ImageDataset:
            espec, eopts = _plugin_options(table["name"], {k: v for k, v in table.items() if k != "name"}, f"{_key}.test_on", base, root)
            return espec.load(**eopts)

        try:
            with sizes_ahead(_input_sizes(suite)):  # image files: resized for training in the pass that checks them
                dataset = dspec.load(**options)
        except UserError as exc:  # the plugin's message, with the key that names this dataset
            message = str(exc)
            raise UserError(message if message.startswith(key) else f"{key} ({ref.name}): {message}") from None
        folds = range(protocol.folds) if protocol.split == "kfold" and protocol.fold is None else [protocol.fold]
        for fold in folds:
            p = dataclasses.replace(protocol, fold=fold) if fold is not None else protocol
            split, report = _split(dataset, p, load_external, key)
            vfolds = None
            if suite.confirm.enabled and suite.confirm.resplit == RESPLIT_FOLDS:  # refused now, not after the search
                try:
                    vfolds = validation_folds(split, p.seed, p.level)
                except UserError as exc:
                    raise UserError(f"{key}: {exc}") from None
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
            datasets.append((ref, split, p, report, fold if protocol.split == "kfold" else None, vfolds))

    backbones = []
    for ref in suite.backbones:
        if ref.name not in plugins.backbones():
            raise UserError(f"{where}.backbones: {plugins.backbones().unknown_message(ref.name)}")
        if ref.weights and not is_url(ref.weights):
            ref = BackboneRef(ref.name, _resolve_path(ref.weights, base), ref.sha256)
            if not Path(ref.weights).is_file():
                raise UserError(f"{where}.backbones: weights file for {ref.name!r} not found: {ref.weights}")
        bspec = plugins.backbones().get(ref.name)
        # build it once with the weights the trials will load when they are a file or URL the suite names, or
        # shipped with freezebench: a wrong file, URL, hash or architecture fails here, not in trial 0. (A
        # plugin's default download, from a hub, is left to the trials: preparing needs no network.)
        named = bool(ref.weights) or bspec.default_weights == "shipped"
        pretrained = named and any(strategies.get(n).pretrained for n in names)
        try:
            skeleton = bspec.build(2, WeightsRequest(pretrained, ref.weights, ref.sha256))
        except UserError as exc:
            raise UserError(f"{where}.backbones: {ref.name!r}: {exc}") from None
        if skeleton.weights_note:
            prepared.notes.append((ref.name, f"weights {ref.weights or skeleton.weights_source}: {skeleton.weights_note}"))
        units = {}
        for granularity in _values(suite.params.get("granularity", DEFAULTS["granularity"])):
            units[granularity] = with_granularity(skeleton, granularity).unit_names()
            _check_unit_params(where, suite, [strategies.get(n) for n in names], ref.name, granularity, units[granularity])
        backbones.append((ref, bspec, units))

    prepared.studies = [
        StudyPlan(suite, dref, ds, bref, bspec, units, protocol, report, fold, vfolds)
        for dref, ds, protocol, report, fold, vfolds in datasets
        for bref, bspec, units in backbones
    ]
    if not prepared.studies:
        why = "; ".join(f"{name}: {reason}" for name, reason in prepared.skipped)
        raise UserError(f"{where}: no dataset of this suite is available ({why}). Set data_root in the suite, "
                        "or FREEZEBENCH_DATA_ROOT, to the folder that holds the datasets.")
    return prepared


def _split(dataset: ImageDataset, protocol: SplitProtocol, load_external, key: str):
    """Split and audit, turning the splitter's refusal (more folds than subjects) into a message."""
    try:
        return apply_protocol(dataset, protocol, load_external, augment_array)
    except ValueError as exc:
        if protocol.split != "kfold":
            raise
        groups = len(set(map(str, dataset.groups)))
        raise UserError(f"{key}: folds = {protocol.folds} cannot split dataset {dataset.name!r} ({len(dataset.labels)} images, "
                        f"{groups} subjects, {dataset.counts()}): {exc} Use fewer folds.") from None


def _input_sizes(suite: Suite) -> set[tuple[int, str]]:
    """The (image size, resize mode) pairs the suite's trials will ask for, when they are listed (not a range)."""
    sizes, modes = (suite.params.get(k, DEFAULTS[k]) for k in ("image_size", "resize_mode"))
    if isinstance(sizes, Range):  # searched over a range: not known ahead
        return set()
    return {(int(size), str(mode)) for size in _values(sizes) for mode in _values(modes)}


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
            spec = suite.params[p.name]
            if p.kind == "unit" and isinstance(spec, Range):
                low, high = spec.unit_bounds(n)
                if low > high:
                    raise UserError(f"{key}: the range {{low = {spec.low}, high = {spec.high}}} is empty for backbone "
                                    f"{backbone!r}: with its {n} {granularity} units it runs from {low} down to {high}")
            for v in _values(spec):
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
                if p.kind == "choice" and p.choices and v not in p.choices:
                    raise UserError(f"{key}: {v!r} is not a choice of strategy {strategy.name!r}'s {p.name}: use one of "
                                    f"{', '.join(map(repr, p.choices))}")
