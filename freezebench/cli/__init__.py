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


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a batch scheduler's preemption, ``timeout``, ``docker stop``, a closed terminal),
    raised where the process is, as Ctrl-C is: the trial running is closed as interrupted and queued again."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminated(signum, frame):
    import signal

    signal.signal(signum, signal.SIG_DFL)  # asked twice: stop at once, without the cleanup
    raise Terminated(signum)


def _on_termination():
    """Install the SIGTERM/SIGHUP handler (the main thread only); returns the handlers to put back."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    wanted = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    # a signal the parent set to be ignored stays ignored: `nohup freezebench run ...` must outlive its terminal
    return {s: signal.signal(s, _terminated) for s in wanted if signal.getsignal(s) == signal.SIG_DFL}


def main(argv: list[str] | None = None) -> None:
    import signal

    previous = _on_termination()
    try:
        code = cli.main(args=argv, prog_name="freezebench", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        cause = exc.__cause__ if isinstance(exc, click.exceptions.Abort) else exc  # click wraps Ctrl-C as Abort
        stopped = cause.signum if isinstance(cause, Terminated) else None
        what = f"Stopped by {signal.Signals(stopped).name}" if stopped else "Interrupted"
        err_console.print(f"{what}. Finished trials are saved; run the same command again to resume.")
        sys.exit(128 + stopped if stopped else 130)
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
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    sys.exit(code if isinstance(code, int) else 0)
