"""The ``freezebench`` command line. Commands import torch, timm, optuna and mlflow only when they run."""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import UserError, fault_of
from .console import err_console, styled


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="freezebench")
def cli():
    """Benchmark freeze strategies for transfer learning on medical images."""


def _register_commands() -> None:
    from . import info, models, report, results, run

    cli.add_command(run.run)
    cli.add_command(run.worker)
    cli.add_command(info.plugins_cmd)
    cli.add_command(info.list_cmd)
    cli.add_command(info.describe_cmd)
    cli.add_command(results.leaderboard_cmd)
    cli.add_command(results.recommend_cmd)
    cli.add_command(results.ui_cmd)
    cli.add_command(report.report_cmd)
    cli.add_command(models.export_cmd)
    cli.add_command(models.predict_cmd)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="freezebench", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("Interrupted. Finished trials are saved; run the same command again to resume.")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        err_console.print(styled(("Error:", "bold red"), f" {exc}"), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        fault = fault_of(exc)
        if fault is None:
            raise  # a bug: its traceback is what a report needs
        err_console.print(styled(("Error:", "bold red"), f" {fault} ({type(exc).__name__}). Finished trials are kept; "
                                 "fix the cause (free space, a writable folder), then run the same command again to resume."),
                          highlight=False, soft_wrap=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
