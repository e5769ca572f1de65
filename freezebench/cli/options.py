"""Options shared by the commands that read or write results."""

import click


def store_options(func):
    func = click.option(
        "--tracking-uri", envvar="FREEZEBENCH_TRACKING_URI", help="MLflow tracking URI (default: SQLite in the results dir)."
    )(func)
    func = click.option(
        "--storage", envvar="FREEZEBENCH_STORAGE", help="Optuna storage URL (default: SQLite in the results dir)."
    )(func)
    func = click.option(
        "--results-dir",
        envvar="FREEZEBENCH_RESULTS",
        type=click.Path(file_okay=False),
        help="Where local stores live (default: ./freezebench-results).",
    )(func)
    return func


def open_results(results_dir, storage, tracking_uri, *, local_only: bool = False):
    """(stores, tracker) of an existing results store, for the commands that read one: the stores checked,
    a clear error when there is none yet, and artifact locations brought along when the folder was moved."""
    from ..errors import UserError
    from ..results.tracking import Tracker
    from ..suite.stores import Stores
    from .console import err_console

    stores = Stores.resolve(results_dir, storage, tracking_uri)
    stores.check()
    if local_only and not stores.local_tracking:
        raise UserError(f"{stores.tracking_uri} is a tracking server already: open it in a browser.")
    if not stores.exists():
        raise UserError(f"No results store at {stores.tracking_uri}. Run a suite first (freezebench run --suite quick).")
    moved = stores.relocate_artifacts()
    if moved:
        err_console.print(moved, markup=False, highlight=False, soft_wrap=True)
    return stores, Tracker(stores.tracking_uri, stores.artifact_root)
