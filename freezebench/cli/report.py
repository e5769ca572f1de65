"""`freezebench report`: an HTML report per suite."""

from __future__ import annotations

from pathlib import Path

import click

from .console import console
from .options import open_results, store_options


@click.command("report")
@click.option("--suite", required=True, help="Suite name.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="freezebench-report", show_default=True)
@store_options
def report_cmd(suite, out_dir, results_dir, storage, tracking_uri):
    """Write one self-contained HTML file for SUITE: leaderboards, studies, figures, configuration."""
    from ..results.report import build_report
    from ..writable import check_writable

    check_writable(Path(out_dir), f"--out {out_dir}", "Name a folder you can write to.")
    _, tracker = open_results(results_dir, storage, tracking_uri)
    path = build_report(tracker, suite, Path(out_dir))
    console.print(f"Report: {path.resolve()}", highlight=False, soft_wrap=True, markup=False)
