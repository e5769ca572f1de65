"""Shared rich consoles and JSON output."""

import json
import sys

from rich.console import Console
from rich.text import Text

console = Console()
err_console = Console(stderr=True)


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def styled(*parts) -> Text:
    """Text from parts: a plain string is shown as it is (never read as rich markup: paths and names
    may hold brackets), a ``(string, style)`` pair gets that style."""
    return Text.assemble(*parts)


def plain(value) -> Text:
    """A table cell or line shown exactly as given."""
    return Text(str(value))
