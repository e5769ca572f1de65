"""Shared rich consoles and JSON output."""

import json
import sys

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
