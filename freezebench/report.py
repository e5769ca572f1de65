"""`freezebench report`: one self-contained HTML file per suite, with the leaderboards, the study
tables, the study analyses (computed now from MLflow, also logged to each study's parent run),
and the per-trial figures of each strategy's best trial, with the configuration behind them."""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from pathlib import Path

from . import registry
from .analysis import Output, StudyRecords, colour
from .errors import UserError
from .leaderboard import leaderboard
from .tracking import TAG, Tracker, load_arrays, log_arrays

TRIAL_FIGURES = ("output_scores.png", "fc_weights.png", "weight_class_correlation.png", "grad_cam.png", "deconv_view.png",
                 "test_confusion_matrix.png", "test_roc.png")


def study_records(tracker: Tracker, experiment_id: str, parent) -> StudyRecords:
    client = tracker.client
    study = parent.data.tags[f"{TAG}.study"]
    runs = client.search_runs([experiment_id], f"tags.`{TAG}.role` = 'trial' and tags.`{TAG}.study` = '{study}'", max_results=5000)
    trials = []
    for r in runs:
        history = {"val_loss": [m.value for m in sorted(client.get_metric_history(r.info.run_id, "val_loss"), key=lambda m: m.step)]}
        trials.append({"run_id": r.info.run_id, "run_name": r.info.run_name, "params": r.data.params,
                       "metrics": r.data.metrics, "history": history, "state": r.data.tags.get(f"{TAG}.state", "")})
    return StudyRecords(study=study, dataset=parent.data.tags.get(f"{TAG}.dataset", ""),
                        metric=parent.data.tags.get(f"{TAG}.objective", "val_f1").removeprefix("val_"), trials=trials,
                        load_arrays=lambda run_id, name: load_arrays(client, run_id, name))


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()


def _img(png: bytes, title: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(title)}</figcaption></figure>'


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            cells.append(f"<td>{'-' if v is None else (f'{v:.4g}' if isinstance(v, float) else html.escape(str(v)))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def build_report(tracker: Tracker, suite: str, out_dir: Path) -> Path:
    client = tracker.client
    studies = []
    for exp in client.search_experiments():
        for parent in client.search_runs([exp.experiment_id], f"tags.`{TAG}.role` = 'study' and tags.`{TAG}.suite` = '{suite}'"):
            studies.append((exp, parent))
    if not studies:
        raise UserError(f"No results for suite {suite!r} in {tracker.tracking_uri}: run it first (freezebench run --suite {suite}).")
    analyses = [e.obj for e in registry.analyses().entries() if e.obj.scope == "study"]
    sections, datasets = [], {}
    for exp, parent in studies:
        records = study_records(tracker, exp.experiment_id, parent)
        datasets.setdefault(exp.name, records.metric)
        parts = [f"<h3>Study {html.escape(records.study)}</h3>"]
        parts.append(_table([{"parameter": k, "value": v} for k, v in sorted(parent.data.params.items())], ["parameter", "value"]))
        trial_rows = [{"trial": t["run_name"], "state": t["state"], "strategy": t["params"].get("strategy"),
                       f"val {records.metric}": t["metrics"].get(f"best_val_{records.metric}"),
                       f"test {records.metric}": t["metrics"].get(f"test_{records.metric}"),
                       "test auc": t["metrics"].get("test_auc"), "trainable": t["metrics"].get("trainable_params")}
                      for t in sorted(records.trials, key=lambda t: t["run_name"])]
        parts.append(_table(trial_rows, list(trial_rows[0]) if trial_rows else ["trial"]))
        for analysis in analyses:
            for out in analysis.run(records):
                _log(client, parent.info.run_id, out)
                if out.figure is not None:
                    parts.append(_img(_png(out.figure), f"{out.title} ({analysis.name})"))
        parts.append(_best_per_strategy(client, records))
        sections.append("\n".join(parts))
    boards = []
    for dataset, metric in datasets.items():
        rows = leaderboard(tracker, dataset, metric, suite=suite)
        boards.append(f"<h2>Leaderboard: {html.escape(dataset)}</h2>" + _table(
            rows, ["rank", "backbone", "strategy", "strategy_params", "lr", f"val_{metric}", "test_accuracy", "test_f1", "test_auc", "trainable_params"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{suite}.html"
    path.write_text(_PAGE.format(suite=html.escape(suite), boards="\n".join(boards), studies="\n".join(sections),
                                 n=len(studies)), encoding="utf-8")
    return path


def _best_per_strategy(client, records: StudyRecords) -> str:
    """The per-trial figures of each strategy's best complete trial, side by side."""
    best: dict[str, dict] = {}
    for t in records.trials:
        s, value = t["params"].get("strategy"), t["metrics"].get(f"best_val_{records.metric}")
        if t["state"] == "complete" and value is not None and (s not in best or value > best[s]["metrics"][f"best_val_{records.metric}"]):
            best[s] = t
    if not best:
        return ""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy, t in sorted(best.items()):
            present = {a.path for a in client.list_artifacts(t["run_id"])}
            figures = [_img(Path(client.download_artifacts(t["run_id"], name, tmp)).read_bytes(), f"{strategy}: {name[:-4].replace('_', ' ')}")
                       for name in TRIAL_FIGURES if name in present]
            rows.append(f'<h4 style="color:{colour(strategy)}">{html.escape(strategy)}: best trial {html.escape(t["run_name"])}</h4>'
                        f'<div class="row">{"".join(figures)}</div>')
    return "<h4>Inside the networks: the best trial of each strategy</h4>" + "\n".join(rows)


def _log(client, run_id: str, out: Output) -> None:
    if out.figure is not None:
        client.log_figure(run_id, out.figure, f"analyses/{out.name}")
    if out.data is not None:
        client.log_text(run_id, json.dumps(out.data, indent=1, default=str), f"analyses/{out.name}")
    if out.arrays is not None:
        log_arrays(client, run_id, out.arrays, f"analyses/{out.name}")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>freezebench report: {suite}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f3f3f3; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
figure img {{ max-width: 460px; border: 1px solid #ddd; }}
figcaption {{ font-size: 12px; color: #555; }}
.row {{ white-space: nowrap; overflow-x: auto; }}
</style></head><body>
<h1>freezebench report: suite {suite}</h1>
<p>{n} studies. Trials are ranked by their best validation metric; test metrics are measured at that epoch.</p>
{boards}
<h2>Studies</h2>
{studies}
</body></html>
"""
