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
