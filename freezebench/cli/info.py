"""`freezebench plugins` and `freezebench list`: what is installed."""

from __future__ import annotations

import click

from .console import console, plain, print_json


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
        table.add_row(*map(plain, (p.name, p.module, dist, ", ".join(p.hooks))))
    console.print(table)


@click.command("list")
@click.argument("kind", type=click.Choice(["datasets", "backbones", "strategies", "analyses"]))
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(kind: str, pattern: str | None, as_json: bool):
    """List installed datasets, backbones, strategies or analyses, optionally filtered by a wildcard PATTERN."""
    from ..plugins import get_registry

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
        if kind == "analyses":
            row["scope"] = e.obj.scope
        rows.append(row)
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title=plain(f"{kind}" + (f" matching {pattern!r}" if pattern else "")))
    cols = list(rows[0]) if rows else ["name", "plugin", "summary"]
    for col in cols:
        table.add_column(col)
    for row in rows:
        table.add_row(*(plain(", ".join(map(str, v)) if isinstance(v, list) else v) for v in row.values()))
    console.print(table)
    if not rows:
        console.print(f"No {kind} match {pattern!r}." if pattern else f"No {kind} installed.", markup=False)


@click.command("describe")
@click.argument("backbone")
@click.option("--granularity", type=click.Choice(["block", "layer"]), default="block", show_default=True)
@click.option("--head", type=click.Choice(["linear", "mlp"]), default="linear", show_default=True)
@click.option("--classes", type=click.IntRange(min=2), default=2, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def describe_cmd(backbone: str, granularity: str, head: str, classes: int, as_json: bool):
    """Show BACKBONE's freeze units in order with their parameter counts, and its head."""
    from ..backbone import WeightsRequest
    from ..engine.heads import describe_head, with_head
    from ..engine.units import with_granularity
    from ..plugins import backbones

    entry = backbones().entry(backbone)
    built = with_head(with_granularity(entry.obj.build(classes, WeightsRequest(pretrained=False)), granularity), head)
    total = sum(p.numel() for p in built.model.parameters())
    rows = [{"index": i, "unit": u.name, "params": built.param_count(u), "share": built.param_count(u) / total}
            for i, u in enumerate(built.units)]
    head_params = built.param_count(built.head)
    data = {"backbone": backbone, "plugin": entry.plugin, "granularity": granularity, "units": rows,
            "head": {"module": built.head.name, "params": head_params, "share": head_params / total,
                     "description": describe_head(built)},
            "total_params": total, "default_weights": entry.obj.default_weights}
    if as_json:
        print_json(data)
        return
    from rich import box
    from rich.table import Table

    table = Table(title=f"{backbone}: {len(rows)} {granularity} units, input to output", box=box.SIMPLE_HEAD)
    for col, justify in (("#", "right"), ("unit", "left"), ("params", "right"), ("share", "right"), ("frozen by k=#+1", "right")):
        table.add_column(col, justify=justify)
    cumulative = 0
    for r in rows:
        cumulative += r["params"]
        table.add_row(str(r["index"]), r["unit"], f"{r['params']:,}", f"{100 * r['share']:.2f}%", f"{100 * cumulative / total:.1f}%")
    table.add_row("", f"head: {built.head.name}", f"{head_params:,}", f"{100 * head_params / total:.2f}%", "never")
    console.print(table)
    console.print(f"total {total:,} parameters; head {describe_head(built)}", highlight=False, markup=False)
    console.print(f"default weights: {entry.obj.default_weights}", highlight=False, markup=False)
