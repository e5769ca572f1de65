"""The records a trial is made of, as plain data (no torch): its configuration, its outcome and
result, and what its trained model produced on the test set.

``TrialConfig`` is the one table of trial parameters: each field carries its default, the check
the config applies, the allowed values as the docs state them, and its docs line
(``docs/configuration.md`` is checked against :func:`params_markdown`). The choices the engine
accepts (``BN_POLICIES``, ``HEADS``, ...) are defined here once and imported by the engine.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import numpy as np

# The values each choice parameter accepts (the engine imports these; nothing else spells them).
OPTIMIZERS = ("sgd", "adam")
BN_POLICIES = ("eval", "frozen", "train")
GRANULARITIES = ("block", "layer")
LR_SCHEDULES = ("constant", "step", "cosine")
SELECT_EPOCHS = ("best", "last")
HEADS = ("linear", "mlp")
HEAD_INITS = ("random", "linear_probe")
AUGMENT_MODES = ("none", "online", "offline")
BALANCE_MODES = ("none", "loss", "sampler")
RESIZE_MODES = ("stretch", "pad")
CACHE_MODES = ("auto", "off")
CACHE_DTYPES = ("float32", "float16")
AMP_MODES = ("auto", "off", "bf16", "fp16")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")

# Metrics every trial reports, and which way is better.
HIGHER_IS_BETTER = {"accuracy": True, "precision": True, "recall": True, "f1": True, "auc": True, "loss": False}
METRICS = tuple(HIGHER_IS_BETTER)


def is_better(metric: str, new: float, old: float | None) -> bool:
    """Whether ``new`` beats ``old`` for ``metric``: a NaN never wins; anything else beats None or NaN."""
    if old is None or (isinstance(old, float) and math.isnan(old)):
        return not math.isnan(new)
    if math.isnan(new):
        return False
    return new > old if HIGHER_IS_BETTER[metric] else new < old


def _p(default: Any, allowed: str, doc: str, check: Callable[[Any], bool] | tuple | None = None, *,
       expects: str | None = None, shown: str | None = None):
    """A trial parameter: its default, ``allowed`` (its type and range as the docs state them), its
    docs line, the check the config applies (a predicate, or the allowed values), and what an error
    message says it ``expects`` (derived from the allowed values for choices)."""
    if expects is None:
        expects = _quoted(check) if isinstance(check, tuple) else allowed
    return field(default=default, metadata={"allowed": allowed, "doc": doc, "check": check, "expects": expects,
                                            "shown": shown if shown is not None else _shown(default)})


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"`{value}`"
    return str(value)


def _quoted(values: tuple) -> str:
    return ", ".join(repr(v) for v in values[:-1]) + f" or {values[-1]!r}" if len(values) > 1 else repr(values[0])


def _ticks(values: tuple) -> str:
    return ", ".join(f"`{v}`" for v in values[:-1]) + f" or `{values[-1]}`" if len(values) > 1 else f"`{values[0]}`"


def _positive(v) -> bool:
    return v > 0


@dataclass(frozen=True)
class TrialConfig:
    """The fully resolved configuration of one trial: every trial parameter, with its default."""

    strategy: str = _p(None, "string", "a freeze strategy (`freezebench list strategies`)", shown="required", expects='a freeze strategy name')
    lr: float = _p(None, "float > 0", "base learning rate", _positive, shown="required", expects='a learning rate > 0')
    optimizer: str = _p("sgd", _ticks(OPTIMIZERS), "SGD uses `momentum`", OPTIMIZERS)
    momentum: float = _p(0.9, "float in [0, 1)", "SGD momentum", lambda v: 0 <= v < 1, expects='a number in [0, 1)')
    weight_decay: float = _p(0.0, "float >= 0", "applies only to trainable parameters", lambda v: v >= 0, expects='a number >= 0')
    head_lr_mult: float = _p(10.0, "float > 0", "the new head's LR = `lr * head_lr_mult` (10x as in the papers)", _positive, expects='a multiplier > 0')
    bn_policy: str = _p("eval", _ticks(BN_POLICIES),
                        "BatchNorm in frozen units: `eval` keeps it in inference mode even after `.train()`; `frozen` "
                        "swaps it for timm's FrozenBatchNorm; `train` lets running statistics update", BN_POLICIES)
    epochs: int = _p(3, "int >= 1", "training epochs; the best validation epoch is kept", _positive, expects='an integer >= 1')
    batch_size: int = _p(32, "int >= 2", "images per training batch", lambda v: v >= 2, expects='an integer >= 2')
    image_size: int = _p(64, "int 16..1024", "images are resized to this square size (use 224 for benchmarks)",
                         lambda v: 16 <= v <= 1024, expects='an integer in 16..1024')
    seed: int = _p(0, "int >= 0", "seeds weights init of the head, batch order", lambda v: v >= 0, expects='an integer >= 0')
    granularity: str = _p("block", _ticks(GRANULARITIES),
                          "what a unit is: timm/torchvision blocks, or every conv/linear layer", GRANULARITIES)
    lr_decay: float = _p(1.0, "float in (0, 1]", "layer-wise LR decay over the units", lambda v: 0 < v <= 1, expects='a layer-wise LR decay in (0, 1]')
    lr_schedule: str = _p("constant", _ticks(LR_SCHEDULES), "applied to every group, including ones unfrozen later",
                          LR_SCHEDULES)
    lr_step: int = _p(10, "int >= 1", "epochs between LR drops (`step`)", _positive, expects='an integer >= 1 (epochs between LR drops)')
    lr_gamma: float = _p(0.1, "float in (0, 1]", "factor of each drop (`step`)", lambda v: 0 < v <= 1, expects='a factor in (0, 1]')
    select_epoch: str = _p("best", _ticks(SELECT_EPOCHS), "which epoch's weights are tested", SELECT_EPOCHS)
    head: str = _p("linear", _ticks(HEADS), "the new head; `mlp` is paper 003's Dense-ReLU-Dropout-BN-Linear", HEADS)
    head_init: str = _p("random", _ticks(HEAD_INITS),
                        "how the new head starts: `linear_probe` fits it first as a logistic regression on the starting "
                        "network's features (LP-FT's first stage; linear heads only; [performance.md](performance.md))",
                        HEAD_INITS)
    head_hidden: int = _p(256, "int >= 1", "width of the `mlp` head", _positive, expects='an integer >= 1')
    head_dropout: float = _p(0.5, "float in [0, 1)", "dropout of the `mlp` head", lambda v: 0 <= v < 1, expects='a probability in [0, 1)')
    augment: str = _p("none", _ticks(AUGMENT_MODES), "see [datasets.md](datasets.md)", AUGMENT_MODES)
    augment_copies: int = _p(4, "int >= 1", "offline copies per training image", _positive, expects='an integer >= 1 (offline copies per training image)')
    balance: str = _p("none", _ticks(BALANCE_MODES), "class-balanced loss or sampler", BALANCE_MODES)
    resize_mode: str = _p("stretch", _ticks(RESIZE_MODES), "how images reach the square input size", RESIZE_MODES)
    cache: str = _p("auto", _ticks(CACHE_MODES), "frozen-prefix caching: compute the never-trained first units once per "
                    "image ([performance.md](performance.md))", CACHE_MODES)
    cache_dtype: str = _p("float32", _ticks(CACHE_DTYPES), "how cached features are stored (`float16` halves their memory)",
                          CACHE_DTYPES)
    cache_limit_mb: int = _p(2048, "int >= 1 (MB)", "features larger than this are not cached (the trial trains without "
                             "caching and says why)", _positive, expects='an integer >= 1 (MB)')
    device: str = _p("auto", "`auto`, `cpu`, `cuda`, `cuda:N` or `mps`",
                     "where trials compute; `auto` is the first CUDA GPU, else the CPU. Asking for a GPU the machine lacks "
                     "stops the run before anything is written", lambda v: bool(DEVICE_PATTERN.match(v)), expects="'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    amp: str = _p("auto", _ticks(AMP_MODES), "mixed precision: `auto` is bfloat16 (or float16 with a gradient scaler) on a "
                  "GPU and float32 on the CPU; `fp16` needs a GPU", AMP_MODES)
    channels_last: bool = _p(True, "true or false", "NHWC memory layout for convolutions (faster on GPUs, and on the CPU "
                             "measured here)", expects='true or false')
    # not trial parameters of a suite: the suite's objective, and the strategy's own parameters
    metric: str = "f1"
    strategy_params: dict[str, Any] = field(default_factory=dict)

    def as_flat_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("strategy_params"))
        return out

    @classmethod
    def from_flat_dict(cls, flat: dict[str, Any]) -> "TrialConfig":
        """The inverse of :meth:`as_flat_dict`: names that are no field are the strategy's own parameters."""
        names = {f.name for f in dataclasses.fields(cls)} - {"strategy_params"}
        return cls(**{k: v for k, v in flat.items() if k in names},
                   strategy_params={k: v for k, v in flat.items() if k not in names})


@dataclass(frozen=True)
class ParamSpec:
    """One row of the trial-parameter table."""

    name: str
    type: type
    default: Any
    allowed: str
    doc: str
    check: Callable[[Any], bool] | tuple | None
    shown: str
    expects: str

    @property
    def required(self) -> bool:
        return self.default is None

    def accepts(self, value: Any) -> bool:
        """Type and range check (ints are accepted for floats; bools only for bools)."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is not bool and isinstance(value, bool)):
            return False
        if self.type is float and not math.isfinite(value):
            return False
        if callable(self.check):
            return bool(self.check(value))
        return self.check is None or value in self.check


_TYPES = {"str": str, "float": float, "int": int, "bool": bool}
PARAMS: dict[str, ParamSpec] = {
    f.name: ParamSpec(f.name, _TYPES[f.type], f.default, f.metadata["allowed"], f.metadata["doc"], f.metadata["check"],
                      f.metadata["shown"], f.metadata["expects"])
    for f in dataclasses.fields(TrialConfig) if "doc" in f.metadata
}
# every trial parameter but the required ones, with their defaults
DEFAULTS: dict[str, Any] = {name: p.default for name, p in PARAMS.items() if not p.required}


def params_markdown() -> str:
    """The trial-parameter table of docs/configuration.md, as the table above defines it."""
    lines = ["| parameter | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{p.name}` | {p.allowed} | {p.shown} | {p.doc} |" for p in PARAMS.values()]
    return "\n".join(lines)


@dataclass
class TrainOutcome:
    """What training measured: per-epoch history, the selected epoch, and the test at that epoch."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    test_probs: np.ndarray | None = None  # (N, C) at the selected epoch
    test_labels: np.ndarray | None = None


@dataclass
class TrialOutputs:
    """What a trained trial's model produced on the test set (the input of trial analyses)."""

    strategy: str
    class_names: tuple[str, ...]
    labels: np.ndarray  # (N,)
    logits: np.ndarray  # (N, C) final-layer scores
    penultimate: np.ndarray  # (N, D) the head's input features
    head_weight: np.ndarray  # (C, D) of the final linear layer
    head_bias: np.ndarray | None = None
    saliency: Any = None  # feature maps of a few test images, set by the feature_maps plugin (SaliencyMaps)


@dataclass
class TrialResult:
    config: TrialConfig
    plan: Any  # freezebench.strategy.FreezePlan
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
    outputs: TrialOutputs | None = None  # the trained model's test-set outputs, for analyses
    artifacts: list = field(default_factory=list)  # Outputs (figures, data, arrays) made by analyses and plugins
    inspected: bool = True  # whether the trial analyses (and test figures) are to run on it
    backbone: Any = field(default=None, repr=False)  # the trained network (a Backbone), to keep as the trial's model
    peak_memory_mb: float | None = None  # CUDA: the trial's peak allocated memory; CPU: the process's peak RSS so far
    peak_memory_of: str = ""  # "cuda allocated" or "process max RSS"
    head_init: str = ""  # how the head started when it was fitted first (``head_init = "linear_probe"``)


@dataclass
class StudySummary:
    """One study's outcome, as ``freezebench run`` prints it and the ``study_finished`` hook gets it."""

    study: str
    dataset: str
    backbone: str
    counts: dict[str, int] = field(default_factory=dict)
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_test: dict[str, float] = field(default_factory=dict)
    parent_run_id: str = ""
