"""`freezebench leaderboard`, `freezebench recommend` and `freezebench ui`: read results back from MLflow."""

from __future__ import annotations

import sys

import click

from ..errors import UserError
from .console import console, err_console, plain, print_json
from .options import open_results, store_options


def _fmt(column: str, v) -> str:
    if v is None:
        return "-"
    if column == "lr":
        return f"{float(v):.1e}"
    if column == "trainable_params":
        return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v / 1e3:.1f}k"
    if column == "wall_time_s":
        return f"{v:.1f}s"
    if column == "epoch_time_s":
        return f"{v:.2f}"
    if column == "peak_memory_mb":
        return f"{v:.0f}"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


# column -> header; compact enough for an 80-column terminal
LEADERBOARD_COLUMNS = {
    "rank": "#", "backbone": "backbone", "strategy": "strategy", "strategy_params": "with", "lr": "lr", "best_epoch": "ep",
    "val": "val", "test_accuracy": "test acc\n[95% CI]", "test_auc": "test auc\n[95% CI]", "tie": "vs\nfirst",
    "test_f1": "test\nf1", "trainable_params": "trained\nparams", "epoch_time_s": "s/\nepoch",
    "peak_memory_mb": "peak\nMB", "wall_time_s": "time",
}


def _cell(c: str, r: dict, metric: str) -> str:
    if c in ("test_accuracy", "test_auc") and r.get(f"{c}_ci"):
        low, high = r[f"{c}_ci"]
        flag = "!" if c == "test_accuracy" and r.get("degenerate") else ""
        return f"{r[c]:.3f}{flag} {low:.2f}-{high:.2f}"
    if c == "val" and r.get("confirmed"):
        return f"{r[f'val_{metric}']:.3f}±{r[f'val_{metric}_std']:.3f} x{r['seeds']}"
    if c == "fold":
        from ..results.layout import fold_of

        found = fold_of(r["study"])
        return str(found[1]) if found else "-"
    if c == "tie":
        from ..results.leaderboard import versus_first

        return versus_first(r, detail=False)
    return _fmt(c, r.get(c if c != "val" else f"val_{metric}"))


def print_leaderboard(tracker, dataset: str, metric: str, suite: str | None = None, limit: int | None = None,
                      group_by: str | None = None, cheapest: str | None = None) -> None:
    from rich import box
    from rich.table import Table

    from ..results import layout
    from ..results.evidence import Predictions
    from ..results.folds import cross_validated
    from ..results.leaderboard import COSTS, VS_FIRST_LEGEND, cheapest_first, leaderboard
    from ..results.recommend import recommendations

    predictions = Predictions(tracker.client)  # loaded once for the leaderboard and the recommendation
    every = leaderboard(tracker, dataset, metric, suite=suite, predictions=predictions)
    rows = leaderboard(tracker, dataset, metric, suite=suite, group_by=group_by,
                       predictions=predictions) if group_by else every
    rows = cheapest_first(rows, cheapest) if cheapest else rows
    rows = rows[:limit] if limit else rows
    for rec in recommendations(tracker, dataset, metric, suite, rows=every, predictions=predictions):  # the answer first
        for line in rec.lines():
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    for cv in cross_validated(every, predictions):  # k-fold: every image tested once, by the fold that held it out
        for line in cv.lines():
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    title = (f"Leaderboard {dataset}" + (f" (suite {suite})" if suite else "")
             + (f", tied with the first cheapest first by {cheapest}, then the rest by val {metric}" if cheapest else
                f", confirmed (mean over seeds, xN) then single trials, by val {metric}")
             + (f", best per {group_by}" if group_by else ""))
    table = Table(title=plain(title), box=box.SIMPLE_HEAD, pad_edge=False)
    cols = dict(LEADERBOARD_COLUMNS, val=f"val\n{metric}")
    if len({r["backbone"] for r in rows}) <= 1:
        cols.pop("backbone")
    if any(layout.fold_of(r["study"]) for r in rows):  # k-fold: rows of different folds were tested on different images
        cols = {"rank": "#", "fold": "fold", **{k: v for k, v in cols.items() if k != "rank"}}
    if console.width < 120:  # keep the table whole on an 80-column terminal; --json has every field
        for c in ("wall_time_s", "best_epoch", "test_f1", "trainable_params", "epoch_time_s", "peak_memory_mb"):
            cols.pop(c)
    elif console.width < 160:
        for c in ("epoch_time_s", "peak_memory_mb"):
            if not cheapest or COSTS[cheapest] != c:
                cols.pop(c)
    for c, header in cols.items():
        width = max(len(line) for line in header.split("\n"))
        width = max([width] + [len(_cell(c, r, metric)) for r in rows])
        table.add_column(header, justify="left" if c in ("backbone", "strategy", "strategy_params") else "right", min_width=width)
    for r in rows:
        table.add_row(*map(plain, (_cell(c, r, metric) for c in cols)))
    console.print(table)
    if not rows:
        console.print(f"No finished trials for {dataset!r} yet.", markup=False)
        return
    console.print(VS_FIRST_LEGEND, markup=False, highlight=False, soft_wrap=True)
    if "fold" in cols:
        console.print("fold: each fold's rows are tested on its own held-out images; rows of different folds are not "
                      "compared ('-').", markup=False, highlight=False, soft_wrap=True)
    if any(r.get("degenerate") for r in rows):
        console.print("! predicts one class for every test image (its accuracy is the majority rate)", markup=False)


DATASET_HELP = "Dataset name (the MLflow experiment). Default: every dataset in the results store."
METRIC_HELP = "Chosen on the best (confirmed: mean) validation value of this metric. Default: the suite's own `metric`."


@click.command("leaderboard")
@click.option("--dataset", help=DATASET_HELP)
@click.option("--metric", help=METRIC_HELP.replace("Chosen on", "Rank by"))
@click.option("--suite", help="Only trials of this suite.")
@click.option("--limit", type=click.IntRange(min=1), help="Show the top N (of each dataset).")
@click.option("--group-by", type=click.Choice(["strategy", "backbone"]), help="Only the best trial of each strategy or backbone.")
@click.option("--cheapest-first", "cheapest", type=click.Choice(["params", "time", "memory"]),
              help="Rows tied with the first on test AUC first, cheapest first: by trainable parameters, seconds per "
                   "epoch or peak memory.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output: one list of rows (each names its dataset).")
@store_options
def leaderboard_cmd(dataset, metric, suite, limit, group_by, cheapest, as_json, results_dir, storage, tracking_uri):
    """Trials ranked by their best validation metric, with test metrics: of DATASET, or of every dataset."""
    from ..results.leaderboard import boards, cheapest_first, leaderboard

    _, tracker = open_results(results_dir, storage, tracking_uri)
    chosen = boards(tracker, dataset, metric, suite)
    if as_json:
        out = []
        for name, by in chosen:
            rows = leaderboard(tracker, name, by, suite=suite, group_by=group_by)
            rows = cheapest_first(rows, cheapest) if cheapest else rows
            out += [{"rank": r["rank"], "dataset": name, **r} for r in (rows[:limit] if limit else rows)]
        print_json(out)
        return
    if not chosen:
        console.print("No finished trials in this results store yet" + (f" for suite {suite!r}." if suite else "."), markup=False)
    for name, by in chosen:
        print_leaderboard(tracker, name, by, suite=suite, limit=limit, group_by=group_by, cheapest=cheapest)


@click.command("recommend")
@click.option("--dataset", help=DATASET_HELP)
@click.option("--metric", help=METRIC_HELP)
@click.option("--suite", help="Only trials of this suite.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output: one object per study.")
@store_options
def recommend_cmd(dataset, metric, suite, as_json, results_dir, storage, tracking_uri):
    """The answer alone: per study (of DATASET, or of every dataset), the recommended configuration with its
    test CIs and its comparison with linear probing and full fine-tuning (what `freezebench run` ends with)."""
    from ..results.evidence import Predictions
    from ..results.leaderboard import boards, leaderboard
    from ..results.recommend import recommendations

    _, tracker = open_results(results_dir, storage, tracking_uri)
    predictions = Predictions(tracker.client)
    recs = []
    for name, by in boards(tracker, dataset, metric, suite):
        rows = leaderboard(tracker, name, by, suite=suite, predictions=predictions)
        recs += recommendations(tracker, name, by, suite, rows=rows, predictions=predictions)
    if as_json:
        print_json([rec.as_dict() for rec in recs])
        return
    if not recs:
        console.print(f"No finished trials for {dataset!r} yet." if dataset else "No finished trials in this results store yet.",
                      markup=False)
    for rec in recs:
        for line in rec.lines():
            console.print(line, markup=False, highlight=False, soft_wrap=True)


def ui_command(stores, port: int) -> list[str]:
    import sys

    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", stores.tracking_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if stores.artifact_root:
        cmd += ["--default-artifact-root", stores.artifact_root]
    return cmd


def port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port``. Bound as a server binds (SO_REUSEADDR): a port
    whose last connections are still in TIME_WAIT is free for a new server, and is not reported."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(cmd: list[str]) -> int:
    """Run the MLflow server in a process group of its own and stop all of it (its uvicorn worker and
    job consumers too) when this process is stopped: SIGTERM, SIGINT (Ctrl-C) or SIGHUP (a closed
    terminal). Returns the server's exit status."""
    import os
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, start_new_session=True)
    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
                if signal.getsignal(s) != signal.SIG_IGN}  # ignored by the parent (nohup): stays ignored
    try:
        while True:
            try:
                code = proc.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                continue
        if stopping:
            try:  # the leader is gone; stragglers of its group get no second chance
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return 0
        return code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@click.command("ui")
@click.option("--port", type=click.IntRange(0, 65535), default=5000, show_default=True,
              help="Port on 127.0.0.1; 0 picks a free one.")
@store_options
def ui_cmd(port, results_dir, storage, tracking_uri):
    """Start the MLflow UI on the local results store, bound to 127.0.0.1."""
    stores, tracker = open_results(results_dir, storage, tracking_uri, local_only=True)
    if port == 0:
        port = free_port()
    elif port_in_use(port):
        raise UserError(f"Port {port} on 127.0.0.1 is in use (another MLflow UI or server?). Pass --port N, "
                        "or --port 0 to pick a free one.")
    from ..results.leaderboard import experiments_with_results, ui_runs_url

    base = f"http://127.0.0.1:{port}"
    console.print(f"MLflow UI for {stores.results_dir} at {base}/#/experiments (Ctrl-C to stop)", highlight=False, soft_wrap=True, markup=False)
    for dataset, exp_id, metric in experiments_with_results(tracker):
        console.print(f"  {dataset} leaderboard: {ui_runs_url(base, exp_id, metric)}", highlight=False, soft_wrap=True, markup=False)
    sys.stdout.flush()
    code = serve(ui_command(stores, port))
    if code:
        err_console.print(f"The MLflow server exited with status {code}.", markup=False)
    raise SystemExit(code)
