"""`freezebench report`: an HTML report per suite."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from .console import console
from .options import store_options


@click.command("report")
@click.option("--suite", required=True, help="Suite name.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="freezebench-report", show_default=True)
@store_options
def report_cmd(suite, out_dir, results_dir, storage, tracking_uri):
    """Write one self-contained HTML file for SUITE: leaderboards, studies, figures, configuration."""
    from ..results.report import build_report
    from ..results.tracking import Tracker
    from ..suite.stores import Stores

    stores = Stores.resolve(results_dir, storage, tracking_uri)
    stores.check()
    if not stores.exists():
        raise UserError(f"No results store at {stores.tracking_uri}. Run a suite first (freezebench run --suite quick).")
    path = build_report(Tracker(stores.tracking_uri, stores.artifact_root), suite, Path(out_dir))
    console.print(f"Report: {path.resolve()}", highlight=False, soft_wrap=True, markup=False)
