"""`freezebench report`: one self-contained HTML page per suite that a person reads top down.

1. **The answer**: per study, the recommendation (with its intervals and paired tests against linear
   probing and full fine-tuning) and one comparison figure: test AUC with its 95% interval against the
   number of frozen units, one line per strategy (or per learning rate, for a grid of one strategy).
2. **Across datasets**: strategies ranked by the Friedman test with a critical-difference diagram.
3. **Leaderboards**: every configuration with its intervals and whether it is tied with the first.
4. **The papers' views**: the study analyses and each strategy's best trial's figures, folded.
5. **Provenance**: the suite as TOML, the split, the leak audit, versions.

Figures are SVG (drawn here) or WebP (trial figures re-encoded), sized to the page: the quick suite's
report stays well under 1 MB."""

from __future__ import annotations

import base64
import functools
import html
import io
import shlex
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from .. import plugins
from ..analysis import DEFAULT_SECTION, StudyRecords, best_per_group, close_figures, colour, pyplot
from ..errors import UserError
from ..writable import written_whole
from . import layout
from .evidence import Predictions
from .folds import cross_validated
from .leaderboard import VS_FIRST_LEGEND, leaderboard, validation, versus_first, with_ci
from .ranking import cd_diagram, rank_strategies
from .recommend import recommendations
from .stats import intervals
from .tracking import Tracker, load_arrays

FIGURE_WIDTH_PX = 800  # trial figures are re-encoded no wider than this
WEBP_QUALITY = 60


def study_records(tracker: Tracker, experiment_id: str, parent) -> StudyRecords:
    client = tracker.client
    study = parent.data.tags[layout.STUDY_NAME]
    runs = client.search_runs([experiment_id], layout.where(layout.TRIAL, study=study), max_results=5000)
    trials = []
    for r in runs:
        history = {"val_loss": [m.value for m in sorted(client.get_metric_history(r.info.run_id, "val_loss"), key=lambda m: m.step)]}
        trials.append({"run_id": r.info.run_id, "run_name": r.info.run_name, "params": r.data.params,
                       "metrics": r.data.metrics, "history": history, "state": r.data.tags.get(layout.STATE, "")})
    arrays = functools.cache(lambda run_id, name: load_arrays(client, run_id, name))  # each artifact read once per report

    @functools.cache
    def test_intervals(run_id: str) -> dict[str, tuple[float, float, float]] | None:
        pred = arrays(run_id, layout.TEST_PREDICTIONS)
        if pred is None:
            return None
        return {m: (i.value, i.low, i.high) for m, i in intervals(pred["labels"], pred["probs"]).items()}

    return StudyRecords(study=study, dataset=parent.data.tags.get(layout.DATASET, ""),
                        metric=layout.objective_metric(parent.data.tags), trials=trials,
                        load_arrays=arrays, load_intervals=test_intervals)


def _svg(figure) -> str:
    """A figure as inline SVG, scaled to the page width."""
    buffer = io.StringIO()
    try:
        with pyplot().rc_context({"svg.fonttype": "none"}):  # text stays text: small and sharp
            figure.savefig(buffer, format="svg", bbox_inches="tight")
    finally:
        pyplot().close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):].replace("<svg ", '<svg class="fig" ', 1)


def _webp(png: bytes) -> bytes:
    """A PNG figure re-encoded as WebP, no wider than FIGURE_WIDTH_PX."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    if image.width > FIGURE_WIDTH_PX:
        image = image.resize((FIGURE_WIDTH_PX, round(image.height * FIGURE_WIDTH_PX / image.width)), Image.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="WEBP", quality=WEBP_QUALITY, method=6)
    return out.getvalue()


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    pyplot().close(figure)
    return buffer.getvalue()


def _img(png: bytes, title: str) -> str:
    data = base64.b64encode(_webp(png)).decode()
    return (f'<figure><img loading="lazy" alt="{html.escape(title)}" src="data:image/webp;base64,{data}">'
            f'<figcaption>{html.escape(title)}</figcaption></figure>')


def _answer(title: str, lines: list[str], figure: str = "") -> str:
    """One answer section: its first line in bold, the others as a list, then an optional figure."""
    return (f'<section class="answer"><h3>{html.escape(title)}</h3><p><b>{html.escape(lines[0])}</b></p><ul>'
            + "".join(f"<li>{html.escape(line.strip())}</li>" for line in lines[1:]) + f"</ul>{figure}</section>")


def _cell(v) -> str:
    return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else html.escape(str(v)))


def row_class(row: dict) -> str:
    """A leaderboard row's HTML classes: "confirmed" (green), and "worse" (grey) or "better" (bold) than the first."""
    return " ".join(c for c in ("confirmed" if row["confirmed"] else "",
                                row.get("vs_first") if row.get("vs_first") in ("worse", "better") else "") if c)


def _table(rows: list[dict], columns: list[str], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def comparison_figure(rows: list[dict], metric: str = "auc"):
    """Test ``metric`` [95% CI] against the number of frozen units, one line per strategy (or per LR when
    one strategy is searched over a grid of LRs); confirmed configurations ringed, the first one starred."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    strategies = {r["strategy"] for r in rows}
    by_lr = len(strategies) == 1 and len({r["lr"] for r in rows}) <= 6
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r.get(f"test_{metric}") is not None:
            groups.setdefault(f"lr {r['lr']:.2g}" if by_lr else r["strategy"], []).append(r)
    for i, (name, members) in enumerate(sorted(groups.items())):
        best: dict[int, dict] = {}
        for r in members:  # rows are ranked: the first at each freeze point is its best
            best.setdefault(len(r["frozen"]), r)
        points = sorted(best.items())
        xs = [x for x, _ in points]
        ys = [r[f"test_{metric}"] for _, r in points]
        cis = [r.get(f"test_{metric}_ci") or [r[f"test_{metric}"]] * 2 for _, r in points]
        err = [[y - c[0] for y, c in zip(ys, cis)], [c[1] - y for y, c in zip(ys, cis)]]
        col = f"C{i}" if by_lr else colour(name)
        ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=2, lw=1, color=col, label=name, alpha=0.9)
        for x, r in points:
            if r.get("confirmed"):
                ax.plot([x], [r[f"test_{metric}"]], "o", ms=9, mfc="none", mec="black", mew=1)
    first = rows[0] if rows else None
    if first is not None and first.get(f"test_{metric}") is not None:
        ax.plot([len(first["frozen"])], [first[f"test_{metric}"]], "*", ms=15, color="gold", mec="black",
                label="recommended", zorder=5)
    ax.set(xlabel="frozen units (0 = nothing frozen)", ylabel=f"test {metric.upper() if metric == 'auc' else metric} [95% CI]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title("Each point: the best configuration at that freeze point; ringed: confirmed over seeds", fontsize=9)
    fig.tight_layout()
    return fig


def _suite_toml(tracker: Tracker, parent) -> str:
    """The suite as the study ran it (TOML), or a note when the study predates it."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            return Path(tracker.client.download_artifacts(parent.info.run_id, layout.SUITE_TOML, tmp)).read_text(encoding="utf-8")
        except (MlflowException, OSError):
            return "(not recorded: a study from before suites were recorded)"


def _provenance(tracker: Tracker, parent) -> str:
    p, t = parent.data.params, parent.data.tags
    toml_text = _suite_toml(tracker, parent)
    facts = [("protocol", t.get(layout.tag("protocol"), "-")), ("split hash", p.get("split_hash", "-")),
             ("images per split and class", _counts(p.get(layout.SPLIT_COUNTS, "-"))), ("leak audit", t.get(layout.tag("leaks"), "-")),
             ("leaks allowed", t.get(layout.tag("leaks_allowed"), "-")), ("dataset source", p.get("dataset_source", "-")),
             ("units", p.get("units_block", "-")),
             ("versions", ", ".join(f"{k.removeprefix(layout.tag('')).removesuffix('_version')} {v}" for k, v in sorted(t.items())
                                    if k.startswith(layout.tag("")) and k.endswith("version")))]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td class='l'>{html.escape(str(v))}</td></tr>" for k, v in facts)
    return (f"<h3>{html.escape(t.get(layout.STUDY_NAME, ''))}</h3><table>{rows}</table>"
            f"<details><summary>The suite as run (TOML)</summary><pre>{html.escape(toml_text)}</pre></details>")


def _counts(text: str) -> str:
    """"{'train': {'0': 147, '1': 399}, ...}" as "train 546 (0: 147, 1: 399); ..."."""
    import ast

    try:
        counts = ast.literal_eval(text)
        return "; ".join(f"{split} {sum(by.values())} ({', '.join(f'{c}: {n}' for c, n in by.items())})"
                         for split, by in counts.items())
    except (ValueError, SyntaxError, AttributeError, TypeError):
        return text


def build_report(tracker: Tracker, suite: str, out_dir: Path) -> Path:
    client = tracker.client
    studies = []
    for exp in client.search_experiments():
        for parent in client.search_runs([exp.experiment_id], layout.where(layout.STUDY, suite=suite)):
            studies.append((exp, parent))
    if not studies:
        raise UserError(f"No results for suite {suite!r} in {tracker.tracking_uri}: run it first (freezebench run --suite {shlex.quote(suite)}).")
    studies.sort(key=lambda sp: sp[1].data.tags.get(layout.STUDY_NAME, ""))
    metrics = {exp.name: layout.objective_metric(parent.data.tags) for exp, parent in studies}

    answers, boards, across = [], [], {}
    for dataset, metric in metrics.items():
        predictions = Predictions(client)
        rows = leaderboard(tracker, dataset, metric, suite=suite, predictions=predictions)
        recs = {r.study: r for r in recommendations(tracker, dataset, metric, suite, rows=rows, predictions=predictions)}
        for study in dict.fromkeys(r["study"] for r in rows):
            mine = [r for r in rows if r["study"] == study]  # ranked: the first is the recommended one
            rec = recs.get(study)
            answers.append(_answer(study, rec.lines() if rec else [f"{study}: no finished trial."],
                                   _svg(comparison_figure(mine))))
            best_of: dict[str, float] = {}
            for r in mine:
                if r.get("test_auc") is not None:
                    best_of.setdefault(r["strategy"], r["test_auc"])
            across[study] = best_of
        for cv in cross_validated(rows, predictions):  # k-fold: the folds' choices pooled, every image tested once
            answers.append(_answer(f"{cv.study}: cross-validated", cv.lines()))
        shown = [{**r, f"val {metric}": validation(r, metric), "vs first": versus_first(r),
                  **{f"test {m} [95% CI]": with_ci(r, m) for m in ("accuracy", "balanced_accuracy", "auc")}} for r in rows]
        columns = ["rank", "study", "backbone", "strategy", "strategy_params", "lr", "head_lr_mult", "bn_policy", "epochs",
                   "image_size", f"val {metric}", "test auc [95% CI]", "test accuracy [95% CI]",
                   "test balanced_accuracy [95% CI]", "vs first", "trainable_params"]
        varying = [c for c in columns if c == "rank" or len({str(r.get(c)) for r in shown}) > 1 or c.startswith(("val", "test", "vs"))]
        same = {c: shown[0].get(c) for c in columns if c not in varying} if shown else {}
        boards.append(f"<h3>Leaderboard: {html.escape(dataset)}</h3>"
                      + (f"<p class='meta'>Every row: {html.escape(', '.join(f'{k} {v}' for k, v in same.items()))}.</p>" if same else "")
                      + _table(shown, varying, [row_class(r) for r in rows]))

    ranked = rank_strategies(across)
    if ranked is None:
        across_html = "<p>Fewer than two strategies were tried in every study: nothing to rank.</p>"
    else:
        figure = cd_diagram(ranked)
        across_html = f"<p>{html.escape(ranked.sentence())}</p>" + (_svg(figure) if figure is not None else "")

    views, provenance = [], []
    analyses = [e.obj for e in plugins.analyses().entries() if e.obj.scope == "study"]
    for exp, parent in studies:
        records = study_records(tracker, exp.experiment_id, parent)
        parts = []
        for analysis in analyses:
            outputs = analysis.run(records)
            try:
                shown = [(_png(out.figure), f"{out.title} ({analysis.name})") for out in outputs
                         if out.figure is not None and out.in_report]  # drawn before logging closes the figures
                tracker.log_outputs(parent.info.run_id, outputs, folder=layout.ANALYSES_FOLDER)
            finally:
                close_figures(outputs)  # logged ones are closed already; these are the ones a failure left open
            parts += [_img(png, title) for png, title in shown]
        views.append(f"<details><summary>{html.escape(records.study)}: study analyses ({len(parts)} figures)</summary>"
                     f"<div class='row'>{''.join(parts)}</div></details>" + _best_per_strategy(tracker, records))
        provenance.append(_provenance(tracker, parent))

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{layout.path_component(suite)}.html"
    page = _PAGE.format(suite=html.escape(suite), n=len(studies), answers="\n".join(answers), across=across_html,
                        boards="\n".join(boards), legend=html.escape(VS_FIRST_LEGEND), views="\n".join(views), provenance="\n".join(provenance),
                        when=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), store=html.escape(tracker.tracking_uri))
    with written_whole(path) as tmp:  # two reports at once each write whole; a killed one leaves nothing for good
        tmp.write_text(page, encoding="utf-8")
    return path


def _best_per_strategy(tracker: Tracker, records: StudyRecords) -> str:
    """The report figures of each strategy's best complete trial, one folded part per section: every
    logged figure whose output is marked ``in_report``, whichever plugin made it."""
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
    return "\n".join(f"<details><summary>{html.escape(records.study)}: {html.escape(section)}: the best trial of each "
                     f"strategy</summary>" + "\n".join(rows) + "</details>"
                     for section, rows in sorted(sections.items(), key=lambda kv: kv[0] != DEFAULT_SECTION))


def _report_figures(tracker: Tracker, run_id: str) -> list[dict]:
    """A trial's figures to show, from its outputs manifest (runs logged before manifests: every PNG)."""
    manifest = tracker.figures_manifest(run_id)
    if manifest is None:
        return [{"name": a.path} for a in tracker.client.list_artifacts(run_id) if a.path.endswith(".png")]
    return [entry for entry in manifest if entry.get("in_report", True)]


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>freezebench report: {suite}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0 auto; padding: 1em 2em; color: #222; max-width: 1100px; line-height: 1.4; }}
h1 {{ margin-bottom: 0.2em; }} .meta {{ color: #666; font-size: 13px; }}
h2 {{ border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }}
table {{ border-collapse: collapse; margin: 0.6em 0; font-size: 12.5px; display: block; overflow-x: auto; max-width: 100%; }}
th, td {{ border: 1px solid #ddd; padding: 2px 7px; text-align: right; white-space: nowrap; }}
th {{ background: #f3f3f3; }} td.l {{ text-align: left; white-space: normal; }}
tr.confirmed td {{ background: #f4faf4; }} tr.worse td {{ color: #888; }} tr.better td {{ font-weight: 600; }}
svg.fig {{ max-width: 100%; height: auto; display: block; }}
figure {{ display: inline-block; margin: 0.4em; vertical-align: top; max-width: 48%; }}
figure img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ font-size: 12px; color: #555; }}
details {{ margin: 0.5em 0; }} summary {{ cursor: pointer; font-weight: 600; }}
pre {{ background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 12px; }}
.answer {{ border-left: 4px solid #2ca02c; background: #f8fcf8; padding: 0.2em 1em 0.8em; margin: 1em 0; }}
.answer ul {{ margin: 0.3em 0; }}
</style></head><body>
<h1>freezebench report: suite {suite}</h1>
<p class="meta">{n} studies; built {when} from {store}.</p>

<h2>1. The answer</h2>
<p>Per study: the recommended configuration (the leaderboard's first row: confirmed over extra seeds when the
suite confirms), its test metrics with 95% confidence intervals (stratified bootstrap over the test images) as one
model (the mean over its seeds) and as its seeds' ensemble (the model <code>freezebench export</code> writes), and
paired tests on the same test images against linear probing and full fine-tuning, both ways (Holm-corrected). On a few
hundred test images, differences of a few points are often noise: read the intervals (docs/reading-results.md).</p>
{answers}

<h2>2. Across datasets</h2>
{across}

<h2>3. Leaderboards</h2>
<p>Confirmed configurations (green) first, by their mean validation metric over seeds, then single trials.
{legend}</p>
{boards}

<h2>4. The papers' views</h2>
<p>The study analyses and the figures of each strategy's best trial (click to open).</p>
{views}

<h2>5. Provenance</h2>
{provenance}
</body></html>
"""
