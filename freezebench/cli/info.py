"""`freezebench plugins` and `freezebench list`: what is installed."""

from __future__ import annotations

import click

from .console import console, print_json


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_cmd(as_json: bool):
    """List installed plugins and the hooks they implement."""
    from ..plugins import list_plugins

    plugins = list_plugins()
    if as_json:
        print_json([p.__dict__ for p in plugins])
        return
    from rich.table import Table

    table = Table(title="freezebench plugins")
    for col in ("name", "module", "distribution", "hooks"):
        table.add_column(col)
    for p in plugins:
        dist = f"{p.distribution} {p.version}" if p.distribution else "-"
        table.add_row(p.name, p.module, dist, ", ".join(p.hooks))
    console.print(table)


@click.command("list")
@click.argument("kind", type=click.Choice(["datasets", "backbones", "strategies"]))
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(kind: str, pattern: str | None, as_json: bool):
    """List installed datasets, backbones or strategies, optionally filtered by a wildcard PATTERN."""
    from ..registry import get_registry

    entries = get_registry(kind).entries(pattern)
    rows = []
    for e in entries:
        row = {"name": e.name, "plugin": e.plugin, "summary": e.summary}
        if kind == "strategies":
            row["params"] = [p.name for p in e.obj.params]
            row["pretrained"] = e.obj.pretrained
        if kind == "backbones":
            row["default_weights"] = e.obj.default_weights
        if kind == "datasets":
            row["options"] = list(e.obj.options)
        rows.append(row)
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title=f"{kind}" + (f" matching {pattern!r}" if pattern else ""))
    cols = list(rows[0]) if rows else ["name", "plugin", "summary"]
    for col in cols:
        table.add_column(col)
    for row in rows:
        table.add_row(*(", ".join(map(str, v)) if isinstance(v, list) else str(v) for v in row.values()))
    console.print(table)
    if not rows:
        console.print(f"No {kind} match {pattern!r}." if pattern else f"No {kind} installed.")
