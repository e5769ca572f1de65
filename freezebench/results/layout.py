"""How freezebench lays its records out in MLflow: experiment per dataset, run roles, tag names,
filter strings and artifact names. Every reader and writer of the store goes through these.

- An experiment per dataset (named after the dataset's alias or name).
- Runs by role (tag ``freezebench.role``): ``study`` (a study's parent run), ``trial`` (a nested
  run per Optuna trial), ``confirm`` (a re-run of a trial with another seed), ``leaderboard``
  (the dataset's stored leaderboard).
"""

from __future__ import annotations

from ..records import HIGHER_IS_BETTER

PREFIX = "freezebench"


def tag(name: str) -> str:
    """The full tag name: ``tag("study")`` is ``freezebench.study``."""
    return f"{PREFIX}.{name}"


# run roles
STUDY, TRIAL, CONFIRM, LEADERBOARD = "study", "trial", "confirm", "leaderboard"

# tags
ROLE = tag("role")
STATE = tag("state")  # running, complete, pruned, failed, interrupted
SUITE = tag("suite")
STUDY_NAME = tag("study")
DATASET = tag("dataset")
BACKBONE = tag("backbone")
OBJECTIVE = tag("objective")  # val_<metric>
STRATEGY = tag("strategy")
STRATEGY_PARAMS = tag("strategy_params")  # "k=5 a=1", or "-"
OPTUNA_TRIAL = tag("optuna_trial")
CONFIRM_OF = tag("confirm_of")  # the run id a confirmation re-runs
CONFIRM_WHY = tag("confirm_why")  # why it is in the confirmation set: "top 1", "best of linear_probe"
FAIL_REASON = tag("fail_reason")
FROZEN_UNITS = tag("frozen_units")
AMOUNTS_TO = tag("amounts_to")  # the reference strategy a trial's plan is ("full" for freeze_to k=0), or absent
PREFIX_CACHE = tag("prefix_cache")
HEAD_INIT = tag("head_init")  # how a warm-started head was fitted (``head_init = "linear_probe"``), or absent
COMPUTE = tag("compute")
PEAK_MEMORY_OF = tag("peak_memory_of")  # what metric peak_memory_mb measures: "cuda allocated" or "process max RSS"
DATASET_PLUGIN = tag("dataset_plugin")  # on an experiment: the dataset plugin whose results it holds
CLASSES = tag("classes")  # on an experiment: its dataset's class names, comma-separated
PARENT = "mlflow.parentRunId"
NOTE = "mlflow.note.content"

# artifacts
FREEZE_PLAN = "freeze_plan.json"
TRIAL_CONFIG = "trial_config.json"
SPLIT_COUNTS = "split_counts"  # a study run's param: images per split and class, as a Python dict literal
UNFREEZE_EVENTS = "unfreeze_events.json"
OUTPUTS_MANIFEST = "outputs.json"  # what each output artifact is: title, section, in_report
TEST_PREDICTIONS = "test_predictions.npz"
SUITE_TOML = "suite.toml"  # the suite as it ran (every default filled in), on the study's parent run
MODEL_FOLDER = "model"  # the trained model (safetensors + manifest), kept for each study's best trials
ENSEMBLE_FOLDER = "ensemble_model"  # an exported seed ensemble, on the study's parent run when registered
ANALYSES_FOLDER = "analyses"  # study analyses, under the study's parent run
LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"


def study_name(suite: str, dataset: str, backbone: str, fold: int | None = None) -> str:
    """A study's name: SUITE/DATASET/BACKBONE, or SUITE/DATASET/foldN/BACKBONE for one fold of a k-fold
    protocol (suite names and dataset labels hold no "/", so the two forms cannot be confused)."""
    return "/".join([suite, dataset, *([f"fold{fold}"] if fold is not None else []), backbone])


def fold_of(study: str) -> tuple[str, int] | None:
    """(the study's name without its fold, the fold) for a fold's study; None for any other study."""
    parts = study.split("/")
    if len(parts) != 4 or not parts[2].startswith("fold") or not parts[2][4:].isdigit():
        return None
    return "/".join(parts[:2] + parts[3:]), int(parts[2][4:])


def path_component(name: str) -> str:
    """``name`` as one safe file or folder name: never a path (no separators, no "." or ".."), nothing
    outside letters, digits and ``._-`` (others become ``_``, with a short hash so names stay distinct)."""
    import hashlib
    import re

    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"
    if safe != name:
        safe = f"{safe[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return safe


def quote(value: str) -> str:
    """A string literal for an MLflow filter (double quotes when the value holds a single quote)."""
    value = str(value)
    return f'"{value}"' if "'" in value else f"'{value}'"


def where(role: str | None = None, *, finished: bool = False, **tags: str | None) -> str:
    """An MLflow filter string: ``where(TRIAL, finished=True, suite="quick")`` selects the finished
    trial runs of suite quick. Keyword names are tag names without the prefix (``confirm_of``);
    None values are left out."""
    parts = [f"tags.`{ROLE}` = {quote(role)}"] if role else []
    parts += [f"tags.`{tag(k)}` = {quote(v)}" for k, v in tags.items() if v is not None]
    if finished:
        parts.append("attributes.status = 'FINISHED'")
    return " and ".join(parts)


MODEL = tag("model")  # "kept" when the run holds its trained model under MODEL_FOLDER
ANALYSED = tag("analysed")  # "true" when the trial analyses and test figures ran on the run (the suite's ``analyses``)
DEGENERATE = tag("degenerate")  # "true" when the trial predicts one class for every test image


def ci(metric: str, end: str) -> str:
    """Where a test metric's 95% interval is stored: ``ci("auc", "low")`` is ``test_auc_ci_low``."""
    return f"test_{metric}_ci_{end}"


def best_val(metric: str) -> str:
    """The metric a trial's selection value is stored under."""
    return f"best_val_{metric}"


def ranked_by(metric: str) -> list[str]:
    """MLflow ``order_by`` ranking trial runs best first on ``metric`` (ties: the earlier run first)."""
    return [f"metrics.{best_val(metric)} {'DESC' if HIGHER_IS_BETTER[metric] else 'ASC'}", "attributes.start_time ASC"]


def objective_metric(tags: dict[str, str], default: str = "f1") -> str:
    """The suite's metric, from a study run's tags."""
    return tags.get(OBJECTIVE, f"val_{default}").removeprefix("val_")
