"""Shared rich consoles and JSON output."""

import json
import os
import sys

from rich.console import Console
from rich.text import Text

# Written to a file or a pipe (`> log.txt`, `| tee`, a cluster job's log), rich would lay everything out in 80
# columns and cut the leaderboard's right-hand columns off; such output is as wide as this instead.
# A terminal keeps its own width, and $COLUMNS, when it is a width (a positive integer), wins; rich ignores
# any other value, so that counts as unset.
FILE_WIDTH = 200


def _console(stream, **kwargs) -> Console:
    columns = os.environ.get("COLUMNS", "").strip()
    to_file = not (columns.isdigit() and int(columns) > 0) and not (hasattr(stream, "isatty") and stream.isatty())
    return Console(width=FILE_WIDTH if to_file else None, **kwargs)


console = _console(sys.stdout)
err_console = _console(sys.stderr, stderr=True)


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def styled(*parts) -> Text:
    """Text from parts: a plain string is shown as it is (never read as rich markup: paths and names
    may hold brackets), a ``(string, style)`` pair gets that style."""
    return Text.assemble(*parts)


def plain(value) -> Text:
    """A table cell or line shown exactly as given."""
    return Text(str(value))
