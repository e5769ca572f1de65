"""`freezebench report`: one self-contained HTML file per suite, with the leaderboards, the study
tables, the study analyses (computed now from MLflow, also logged to each study's parent run),
and the per-trial figures of each strategy's best trial, with the configuration behind them."""

from __future__ import annotations

import base64
import html
import io
import tempfile
from pathlib import Path

from .. import plugins
from ..analysis import DEFAULT_SECTION, StudyRecords, best_per_group, colour, pyplot
from ..errors import UserError
from . import layout
from .leaderboard import leaderboard, with_ci
from .recommend import recommendations
from .tracking import Tracker, load_arrays


def study_records(tracker: Tracker, experiment_id: str, parent) -> StudyRecords:
    client = tracker.client
    study = parent.data.tags[layout.STUDY_NAME]
    runs = client.search_runs([experiment_id], layout.where(layout.TRIAL, study=study), max_results=5000)
    trials = []
    for r in runs:
        history = {"val_loss": [m.value for m in sorted(client.get_metric_history(r.info.run_id, "val_loss"), key=lambda m: m.step)]}
        trials.append({"run_id": r.info.run_id, "run_name": r.info.run_name, "params": r.data.params,
                       "metrics": r.data.metrics, "history": history, "state": r.data.tags.get(layout.STATE, "")})
    return StudyRecords(study=study, dataset=parent.data.tags.get(layout.DATASET, ""),
                        metric=layout.objective_metric(parent.data.tags), trials=trials,
                        load_arrays=lambda run_id, name: load_arrays(client, run_id, name))


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    pyplot().close(figure)
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
        for parent in client.search_runs([exp.experiment_id], layout.where(layout.STUDY, suite=suite)):
            studies.append((exp, parent))
    if not studies:
        raise UserError(f"No results for suite {suite!r} in {tracker.tracking_uri}: run it first (freezebench run --suite {suite}).")
    analyses = [e.obj for e in plugins.analyses().entries() if e.obj.scope == "study"]
    sections, datasets = [], {}
    for exp, parent in studies:
        records = study_records(tracker, exp.experiment_id, parent)
        datasets.setdefault(exp.name, records.metric)
        parts = [f"<h3>Study {html.escape(records.study)}</h3>"]
        parts.append(_table([{"parameter": k, "value": v} for k, v in sorted(parent.data.params.items())], ["parameter", "value"]))
        trial_rows = [{"trial": t["run_name"], "state": t["state"], "strategy": t["params"].get("strategy"),
                       f"val {records.metric}": t["metrics"].get(layout.best_val(records.metric)),
                       f"test {records.metric}": t["metrics"].get(f"test_{records.metric}"),
                       "test auc": t["metrics"].get("test_auc"), "trainable": t["metrics"].get("trainable_params")}
                      for t in sorted(records.trials, key=lambda t: t["run_name"])]
        parts.append(_table(trial_rows, list(trial_rows[0]) if trial_rows else ["trial"]))
        for analysis in analyses:
            outputs = analysis.run(records)
            shown = [(_png(out.figure), f"{out.title} ({analysis.name})") for out in outputs
                     if out.figure is not None and out.in_report]  # drawn before logging closes the figures
            tracker.log_outputs(parent.info.run_id, outputs, folder=layout.ANALYSES_FOLDER)
            parts += [_img(png, title) for png, title in shown]
        parts.append(_best_per_strategy(tracker, records))
        sections.append("\n".join(parts))
    boards = []
    for dataset, metric in datasets.items():
        for rec in recommendations(tracker, dataset, metric, suite):
            lines = rec.lines()
            boards.append(f'<div class="answer"><p><b>{html.escape(lines[0])}</b></p><ul>'
                          + "".join(f"<li>{html.escape(line.strip())}</li>" for line in lines[1:]) + "</ul></div>")
        rows = [{**r, **{f"test {m} [95% CI]": with_ci(r, m) for m in ("accuracy", "balanced_accuracy", "auc")}}
                for r in leaderboard(tracker, dataset, metric, suite=suite)]
        boards.append(f"<h2>Leaderboard: {html.escape(dataset)}</h2>" + _table(
            rows, ["rank", "backbone", "strategy", "strategy_params", "lr", f"val_{metric}", "test accuracy [95% CI]",
                   "test balanced_accuracy [95% CI]", "test auc [95% CI]", "test_f1", "trainable_params"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{layout.path_component(suite)}.html"
    path.write_text(_PAGE.format(suite=html.escape(suite), boards="\n".join(boards), studies="\n".join(sections),
                                 n=len(studies)), encoding="utf-8")
    return path


def _best_per_strategy(tracker: Tracker, records: StudyRecords) -> str:
    """The report figures of each strategy's best complete trial, side by side, one part per section:
    every logged figure whose output is marked ``in_report``, whichever plugin made it."""
    best = best_per_group(records.trials, records.metric, lambda t: t["params"].get("strategy"))
    if not best:
        return ""
    client, sections = tracker.client, {}
    with tempfile.TemporaryDirectory() as tmp:
        for strategy, t in sorted(best.items()):
            by_section: dict[str, list[str]] = {}
            for entry in _report_figures(tracker, t["run_id"]):
                png = Path(client.download_artifacts(t["run_id"], entry["name"], tmp)).read_bytes()
                by_section.setdefault(entry.get("section") or DEFAULT_SECTION, []).append(
                    _img(png, f"{strategy}: {Path(entry['name']).stem.replace('_', ' ')}"))
            for section, figures in by_section.items():
                sections.setdefault(section, []).append(
                    f'<h5 style="color:{colour(strategy)}">{html.escape(strategy)}: best trial {html.escape(t["run_name"])}</h5>'
                    f'<div class="row">{"".join(figures)}</div>')
    return "\n".join(f"<h4>{html.escape(section)}: the best trial of each strategy</h4>" + "\n".join(rows)
                     for section, rows in sorted(sections.items(), key=lambda kv: kv[0] != DEFAULT_SECTION))


def _report_figures(tracker: Tracker, run_id: str) -> list[dict]:
    """A trial's figures to show, from its outputs manifest (runs logged before manifests: every PNG)."""
    manifest = tracker.figures_manifest(run_id)
    if manifest is None:
        return [{"name": a.path} for a in tracker.client.list_artifacts(run_id) if a.path.endswith(".png")]
    return [entry for entry in manifest if entry.get("in_report", True)]


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
.answer {{ border-left: 4px solid #2ca02c; background: #f4faf4; padding: 0.3em 1em; margin: 1em 0; }}
</style></head><body>
<h1>freezebench report: suite {suite}</h1>
<p>{n} studies. Each leads with its recommendation: test metrics with 95% confidence intervals (stratified
bootstrap over the test images) and paired tests against linear probing and full fine-tuning (see
docs/reading-results.md). Trials are ranked by their best validation metric; test metrics are measured at that epoch.</p>
{boards}
<h2>Studies</h2>
{studies}
</body></html>
"""
