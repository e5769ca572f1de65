"""Leaderboards from MLflow: a dataset's configurations, confirmed ones first by their mean over seeds,
with test intervals and ties with the first (``evidence``)."""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..records import HIGHER_IS_BETTER, METRICS
from ..strategy import REFERENCES
from . import layout
from .evidence import Predictions, add_evidence
from .stats import INTERVAL_METRICS
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


def experiments_with_results(tracker: Tracker, suite: str | None = None) -> list[tuple[str, str, str]]:
    """(dataset, experiment id, objective metric) for every dataset experiment in the store with a study (of
    ``suite``, when given), by dataset name."""
    found = ((exp, _objective(tracker.client, exp.experiment_id, suite)) for exp in tracker.client.search_experiments()
             if exp.name != "Default")
    return sorted((exp.name, exp.experiment_id, metric) for exp, metric in found if metric is not None)


def _objective(client, experiment_id: str, suite: str | None = None) -> str | None:
    """The metric the studies of an experiment (of ``suite``) chose on; None when it has no study."""
    studies = client.search_runs([experiment_id], layout.where(layout.STUDY, suite=suite), max_results=1)
    return layout.objective_metric(studies[0].data.tags) if studies else None


def boards(tracker: Tracker, dataset: str | None = None, metric: str | None = None,
           suite: str | None = None) -> list[tuple[str, str]]:
    """(dataset, metric) of each leaderboard to show: ``dataset``, else every dataset in the store that has
    studies (of ``suite``, when given); ranked by ``metric``, else by the metric their suite chose on (what
    ``freezebench run`` ranked by), so the leaderboard and the recommendation read back are the run's own."""
    if dataset is not None:
        exp = tracker.client.get_experiment_by_name(dataset)
        chosen = _objective(tracker.client, exp.experiment_id, suite) if exp is not None else None
        return [(dataset, metric or chosen or "f1")]  # an unknown dataset: leaderboard() names the ones there are
    return [(name, metric or chosen) for name, _, chosen in experiments_with_results(tracker, suite)]


def typed(value: str | None):
    """MLflow stores params as strings; give numbers back as numbers."""
    if value is None:
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _confirmations(client, exp_id: str) -> dict[str, list]:
    """Finished confirmation runs (other seeds) of each trial run, by the trial's run id, seed order."""
    found = client.search_runs([exp_id], layout.where(layout.CONFIRM, finished=True), max_results=5000)
    out: dict[str, list] = {}
    for r in sorted(found, key=lambda r: int(r.data.params.get("seed", 0))):
        out.setdefault(r.data.tags.get(layout.CONFIRM_OF, ""), []).append(r)
    return out


def strategy_params(text: str) -> dict:
    """A trial's own strategy parameters from its tag: "k=5 a=1" -> {"k": 5, "a": 1}; "-" -> {}."""
    pairs = (part.split("=", 1) for part in text.split() if "=" in part)
    return {k: typed(v) for k, v in pairs}


def _row(run, seeds: list, metric: str) -> dict:
    """One configuration: its search trial ``run`` and its confirmation runs ``seeds``. A confirmed row's
    values are means over every seed (the search trial's own values stay in ``val_<metric>_trial``,
    ``test_<m>_trial`` and ``test_<m>_trial_ci``: what a single-run protocol, a paper's, would have reported)."""
    m, p, t = run.data.metrics, run.data.params, run.data.tags
    every = [m] + [r.data.metrics for r in seeds]
    val_key = layout.best_val(metric)
    vals = [s[val_key] for s in every if val_key in s]
    row = {
        "run_name": run.info.run_name,
        "study": t.get(layout.STUDY_NAME, ""),
        "backbone": t.get(layout.BACKBONE, ""),
        **{c: typed(p.get(c)) for c in PARAM_COLUMNS},
        "strategy_params": t.get(layout.STRATEGY_PARAMS, "-"),
        "params": strategy_params(t.get(layout.STRATEGY_PARAMS, "-")),  # the strategy's own, by name
        "best_epoch": int(m.get("best_epoch", 0)),
        "frozen": [] if t.get(layout.FROZEN_UNITS, "-") == "-" else t[layout.FROZEN_UNITS].split(","),
        "amounts_to": t.get(layout.AMOUNTS_TO) or (t.get(layout.STRATEGY) if t.get(layout.STRATEGY) in REFERENCES else None),
        f"val_{metric}": float(np.mean(vals)),
        "seeds": len(every),
        "confirmed": len(every) > 1,
    }
    if len(every) > 1:
        row[f"val_{metric}_std"] = float(np.std(vals))
        row[f"val_{metric}_trial"] = m[val_key]
        row["confirm_why"] = seeds[0].data.tags.get(layout.CONFIRM_WHY, "")
    for k in INTERVAL_METRICS:
        values = [s[f"test_{k}"] for s in every if f"test_{k}" in s]
        row[f"test_{k}"] = float(np.mean(values)) if values else None
        if len(values) > 1:
            row[f"test_{k}_std"] = float(np.std(values))
            row[f"test_{k}_trial"] = m.get(f"test_{k}")
            if layout.ci(k, "low") in m:
                row[f"test_{k}_trial_ci"] = [m[layout.ci(k, "low")], m[layout.ci(k, "high")]]
        elif layout.ci(k, "low") in m:  # one seed: the interval it logged
            row[f"test_{k}_ci"] = [m[layout.ci(k, "low")], m[layout.ci(k, "high")]]
    kept = [r for r in [run, *seeds] if r.data.tags.get(layout.MODEL) == "kept"]
    row.update({
        "degenerate": t.get(layout.DEGENERATE) == "true",
        "trainable_params": int(m.get("trainable_params", 0)),
        "wall_time_s": m.get("wall_time_s"),
        "epoch_time_s": m.get("epoch_time_s"),
        "peak_memory_mb": m.get("peak_memory_mb"),
        "run_id": run.info.run_id,
        "seed_run_ids": [r.info.run_id for r in seeds],
        "model_run_id": kept[0].info.run_id if kept else None,
        "model_run_ids": [r.info.run_id for r in kept],  # every seed that kept its model: the ensemble's members
        "split_hash": p.get("split_hash"),  # which images were tested: rows of other splits (folds) are not compared
    })
    for k, v in row["params"].items():  # also at the top ("k"), unless the name is a field of the row or its rank
        if k not in row and k != "rank":
            row[k] = v
    return row


def leaderboard(tracker: Tracker, dataset: str, metric: str = "f1", suite: str | None = None, limit: int | None = None,
                group_by: str | None = None, study: str | None = None, evidence: bool = True,
                predictions: Predictions | None = None) -> list[dict]:
    """The configurations tried on ``dataset``, best first: those confirmed over several seeds first, by
    their mean validation ``metric``, then the other trials by theirs. With ``evidence``, each row gets
    its test intervals (a confirmed row: bootstrap over images of its mean over seeds) and whether it is
    statistically tied with the first row (see ``evidence``). ``predictions``: a cache of loaded test
    predictions to share with other readers (the recommendation)."""
    if metric not in METRICS:
        raise UserError(f"Unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    if group_by and group_by not in ("strategy", "backbone"):
        raise UserError(f"--group-by must be 'strategy' or 'backbone', not {group_by!r}")
    client = tracker.client
    exp = client.get_experiment_by_name(dataset)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        raise UserError(
            f"No results for dataset {dataset!r} in {tracker.tracking_uri}. "
            f"Datasets with results: {', '.join(names) or 'none (run a suite first)'}."
        )
    query = layout.where(layout.TRIAL, finished=True, suite=suite, study=study)
    runs, token = [], None
    while True:  # every finished trial: a confirmed one may sit anywhere in the single-seed order
        page = client.search_runs([exp.experiment_id], query, order_by=layout.ranked_by(metric), max_results=1000,
                                  page_token=token)  # ties: the earlier trial first
        runs.extend(page)
        token = page.token
        if not token:
            break
    confirms = _confirmations(client, exp.experiment_id)
    rows = [_row(run, confirms.get(run.info.run_id, []), metric) for run in runs if layout.best_val(metric) in run.data.metrics]
    sign = -1 if HIGHER_IS_BETTER[metric] else 1
    rows.sort(key=lambda r: (not r["confirmed"], sign * r[f"val_{metric}"] if r["confirmed"] else 0))  # stable
    if group_by:
        best: dict[str, dict] = {}
        for r in rows:  # rows are ranked: the first of each group is its best
            best.setdefault(str(r[group_by]), r)
        rows = list(best.values())
    rows = [{"rank": i + 1, **r} for i, r in enumerate(rows)]
    if evidence:
        add_evidence(client, rows, predictions)
    return rows[:limit] if limit else rows


COSTS = {"params": "trainable_params", "time": "epoch_time_s", "memory": "peak_memory_mb"}  # --cheapest-first


def cheapest_first(rows: list[dict], cost: str) -> list[dict]:
    """The rows tied with the first on test AUC (not significantly worse), cheapest first by ``cost`` (a key
    of ``COSTS``: trainable parameters, seconds per epoch, peak memory), then the others in their order.
    It answers "what is the cheapest configuration as good as the best?"; the tie is decided on the test
    images, so the first row's own rank is still the validation one. Rows keep their validation ``rank``."""
    if cost not in COSTS:
        raise UserError(f"Unknown cost {cost!r}; choose one of: {', '.join(COSTS)}")
    key = COSTS[cost]
    tied = [r for r in rows if r.get("tied_with_first")]
    rest = [r for r in rows if not r.get("tied_with_first")]
    tied.sort(key=lambda r: (r.get(key) is None, r.get(key) or 0.0, r["rank"]))
    return tied + rest


def to_csv(rows: list[dict]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    rows = [{**{k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items() if not k.endswith("_ci")},
             **{f"{k}_{end}": v[i] for k, v in r.items() if k.endswith("_ci") for i, end in enumerate(("low", "high"))}}
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


def validation(row: dict, metric: str) -> str:
    """The ranking value: "0.871" for one seed, "0.862 ±0.011 (3 seeds)" for a confirmed row."""
    value = row[f"val_{metric}"]
    return f"{value:.3f}" + (f" ±{row[f'val_{metric}_std']:.3f} ({row['seeds']} seeds)" if row.get("confirmed") else "")


VS_FIRST_LEGEND = ("vs first: 'tied' = test AUC not significantly different from the first row's (paired bootstrap on "
                   "the same test images, Holm-corrected); 'worse' = significantly worse; 'better' = significantly "
                   "better, a configuration the choice on validation missed.")


def versus_first(row: dict, detail: bool = True) -> str:
    """"first", "tied", "worse" or "better" (significantly), or "-" (not compared), for the leaderboard's
    tie column; with ``detail``, the AUC difference and its p-value follow."""
    if row.get("rank") == 1:
        return "first"
    if row.get("tied_with_first") is None:
        return "-"
    diff = row.get("vs_first_auc")
    verdict = row.get("vs_first") or ("tied" if row["tied_with_first"] else "worse")
    return verdict + (f" (AUC {diff:+.3f}, p {row['vs_first_p']:.2g})" if detail and diff is not None else "")


def to_markdown(rows: list[dict], metric: str, dataset: str) -> str:
    head = (f"# Leaderboard: {dataset}\n\nConfigurations confirmed over several seeds first, ranked by their mean "
            f"validation {metric}, then single trials by their best validation {metric}. Test metrics with 95% confidence "
            "intervals (stratified bootstrap over the test images; a confirmed row: of its mean over seeds). "
            f"{VS_FIRST_LEGEND}\n\n")
    lines = [f"| # | study | strategy | with | lr | val {metric} | test acc | test bal. acc | test auc | vs first | trained params |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flag = " (one class only)" if r.get("degenerate") else ""
        lines.append(f"| {r['rank']} | {r['study']} | {r['strategy']} | {r['strategy_params']} | {r['lr']:.2e} | "
                     f"{validation(r, metric)} | {with_ci(r, 'accuracy')}{flag} | {with_ci(r, 'balanced_accuracy')} | "
                     f"{with_ci(r, 'auc')} | {versus_first(r)} | {r['trainable_params']:,} |")
    return head + "\n".join(lines) + "\n"


def store(tracker: Tracker, dataset: str, metric: str) -> None:
    """Compute the dataset's leaderboard and keep it in its experiment (CSV, Markdown, run note)."""
    rows = leaderboard(tracker, dataset, metric)
    tracker.store_leaderboard(dataset, to_csv(rows), to_markdown(rows, metric, dataset), to_markdown(rows[:20], metric, dataset))
