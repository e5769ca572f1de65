"""Leaderboards from MLflow: a dataset's trial runs ranked by their best validation metric."""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..records import HIGHER_IS_BETTER, METRICS
from . import layout
from .tracking import Tracker

# trial parameters shown for every trial; a strategy's own parameters (k, a, b, ...) follow them
PARAM_COLUMNS = ("strategy", "lr", "head_lr_mult", "optimizer", "bn_policy", "epochs", "image_size")


def ui_runs_url(base: str, experiment_id: str, metric: str = "f1") -> str:
    """The MLflow UI's runs view of an experiment showing trial runs sorted like the leaderboard."""
    from urllib.parse import quote

    order = "false" if HIGHER_IS_BETTER.get(metric, True) else "true"
    search = quote(layout.where(layout.TRIAL))
    return (f"{base}/#/experiments/{experiment_id}/runs?searchFilter={search}"
            f"&orderByKey={quote(f'metrics.`{layout.best_val(metric)}`')}&orderByAsc={order}")


def experiments_with_results(tracker: Tracker) -> list[tuple[str, str, str]]:
    """(dataset, experiment id, objective metric) for every dataset experiment in the store."""
    out = []
    for exp in tracker.client.search_experiments():
        if exp.name == "Default":
            continue
        studies = tracker.client.search_runs([exp.experiment_id], layout.where(layout.STUDY), max_results=1)
        out.append((exp.name, exp.experiment_id, layout.objective_metric(studies[0].data.tags) if studies else "f1"))
    return out


def _typed(value: str | None):
    """MLflow stores params as strings; give numbers back as numbers."""
    if value is None:
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _spread(client, exp_id: str) -> dict[str, list[dict]]:
    """Confirmation runs (other seeds) of each trial run, by the trial's run id."""
    found = client.search_runs([exp_id], layout.where(layout.CONFIRM, finished=True), max_results=5000)
    out: dict[str, list[dict]] = {}
    for r in found:
        out.setdefault(r.data.tags.get(layout.CONFIRM_OF, ""), []).append(r.data.metrics)
    return out


def strategy_params(text: str) -> dict:
    """A trial's own strategy parameters from its tag: "k=5 a=1" -> {"k": 5, "a": 1}; "-" -> {}."""
    pairs = (part.split("=", 1) for part in text.split() if "=" in part)
    return {k: _typed(v) for k, v in pairs}


def leaderboard(tracker: Tracker, dataset: str, metric: str = "f1", suite: str | None = None, limit: int | None = None,
                group_by: str | None = None) -> list[dict]:
    if metric not in METRICS:
        raise UserError(f"Unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    client = tracker.client
    exp = client.get_experiment_by_name(dataset)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        raise UserError(
            f"No results for dataset {dataset!r} in {tracker.tracking_uri}. "
            f"Datasets with results: {', '.join(names) or 'none (run a suite first)'}."
        )
    query = layout.where(layout.TRIAL, finished=True, suite=suite)
    runs, token = [], None
    while True:
        page = client.search_runs(
            [exp.experiment_id], query, order_by=layout.ranked_by(metric),
            max_results=1000, page_token=token,  # ties: the earlier trial first
        )
        runs.extend(page)
        token = page.token
        if not token or (limit and len(runs) >= limit):
            break
    confirms = _spread(client, exp.experiment_id)
    rows = []
    for run in runs:
        m, p, t = run.data.metrics, run.data.params, run.data.tags
        if layout.best_val(metric) not in m:
            continue
        seeds = [m] + confirms.get(run.info.run_id, [])
        own = strategy_params(t.get(layout.STRATEGY_PARAMS, "-"))
        rows.append(
            {
                "rank": len(rows) + 1,
                "run_name": run.info.run_name,
                "study": t.get(layout.STUDY_NAME, ""),
                "backbone": t.get(layout.BACKBONE, ""),
                **{c: _typed(p.get(c)) for c in PARAM_COLUMNS},
                **{k: v for k, v in own.items() if k not in PARAM_COLUMNS},
                "strategy_params": t.get(layout.STRATEGY_PARAMS, "-"),
                "best_epoch": int(m.get("best_epoch", 0)),
                f"val_{metric}": m[layout.best_val(metric)],
                **{f"test_{k}": m.get(f"test_{k}") for k in ("accuracy", "balanced_accuracy", "f1", "auc")},
                **{f"test_{k}_ci": [m[layout.ci(k, "low")], m[layout.ci(k, "high")]]
                   for k in ("accuracy", "balanced_accuracy", "f1", "auc") if layout.ci(k, "low") in m},
                "degenerate": t.get(layout.DEGENERATE) == "true",
                "trainable_params": int(m.get("trainable_params", 0)),
                "wall_time_s": m.get("wall_time_s"),
                "seeds": len(seeds),
                **{f"{k}_mean": float(np.mean([s[k] for s in seeds if k in s])) for k in (layout.best_val(metric), "test_f1", "test_auc", "test_accuracy") if any(k in s for s in seeds)},
                **{f"{k}_std": float(np.std([s[k] for s in seeds if k in s])) for k in (layout.best_val(metric), "test_f1", "test_auc", "test_accuracy") if sum(k in s for s in seeds) > 1},
                "run_id": run.info.run_id,
            }
        )
    if group_by:
        if group_by not in ("strategy", "backbone"):
            raise UserError(f"--group-by must be 'strategy' or 'backbone', not {group_by!r}")
        best: dict[str, dict] = {}
        for r in rows:  # rows are ranked: the first of each group is its best
            best.setdefault(str(r[group_by]), r)
        rows = [dict(r, rank=i + 1) for i, r in enumerate(best.values())]
    return rows[:limit] if limit else rows


def to_csv(rows: list[dict]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    rows = [{**{k: v for k, v in r.items() if not isinstance(v, list)},
             **{f"{k}_{end}": v[i] for k, v in r.items() if isinstance(v, list) for i, end in enumerate(("low", "high"))}}
            for r in rows]
    if rows:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def with_ci(row: dict, metric: str, digits: int = 3) -> str:
    """A row's test metric with its 95% interval: "0.830 [0.761, 0.893]"; "-" when not measured."""
    value = row.get(f"test_{metric}")
    if value is None:
        return "-"
    ci = row.get(f"test_{metric}_ci")
    return f"{value:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def to_markdown(rows: list[dict], metric: str, dataset: str) -> str:
    head = (f"# Leaderboard: {dataset}\n\nTrials ranked by their best validation {metric}; test metrics at that epoch, "
            "with 95% confidence intervals (stratified bootstrap over the test images).\n\n")
    lines = [f"| # | study | strategy | with | lr | val {metric} | test acc | test f1 | test auc | trained params |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(v):
        return "-" if v is None else f"{v:.4f}"

    for r in rows:
        f1 = with_ci(r, "f1")
        if "test_f1_std" in r:
            f1 = f"{r['test_f1_mean']:.4f} ± {r['test_f1_std']:.4f} ({r['seeds']} seeds)"
        flag = " (one class only)" if r.get("degenerate") else ""
        lines.append(f"| {r['rank']} | {r['study']} | {r['strategy']} | {r['strategy_params']} | {r['lr']:.2e} | "
                     f"{fmt(r.get(f'val_{metric}'))} | {with_ci(r, 'accuracy')}{flag} | {f1} | {with_ci(r, 'auc')} | "
                     f"{r['trainable_params']:,} |")
    return head + "\n".join(lines) + "\n"


def store(tracker: Tracker, dataset: str, metric: str) -> None:
    """Compute the dataset's leaderboard and keep it in its experiment (CSV, Markdown, run note)."""
    rows = leaderboard(tracker, dataset, metric)
    tracker.store_leaderboard(dataset, to_csv(rows), to_markdown(rows, metric, dataset), to_markdown(rows[:20], metric, dataset))
