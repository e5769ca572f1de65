"""`freezebench plugins` and `freezebench list`: what is installed."""

from __future__ import annotations

import click

from ..errors import UserError
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
@click.option("--strategy", help="Also show what trains under this strategy, per unit.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="A strategy parameter (repeatable): --param k=3.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def describe_cmd(backbone: str, granularity: str, head: str, classes: int, strategy: str | None, params: tuple[str, ...],
                 as_json: bool):
    """Show BACKBONE's freeze units in order with their parameter counts, and its head; with --strategy,
    how many parameters of each unit would train under it."""
    from ..backbone import WeightsRequest
    from ..engine.heads import describe_head, with_head
    from ..engine.units import with_granularity
    from ..plugins import backbones

    entry = backbones().entry(backbone)
    if params and not strategy:
        raise UserError("--param sets a strategy parameter: name the strategy with --strategy.")
    if strategy:
        built, trains = _under_strategy(entry.obj, backbone, strategy, params, granularity, head, classes)
    else:
        built, trains = with_head(with_granularity(entry.obj.build(classes, WeightsRequest(pretrained=False)), granularity), head), None
    added_params = set(built.added)
    total = sum(p.numel() for n, p in built.model.named_parameters() if n not in added_params)  # the backbone's own
    rows = [{"index": i, "unit": u.name, "params": built.param_count(u), "share": built.param_count(u) / total,
             **(trains[u.name] if trains else {})} for i, u in enumerate(built.units)]
    head_params = built.param_count(built.head)
    data = {"backbone": backbone, "plugin": entry.plugin, "granularity": granularity, "units": rows,
            "head": {"module": built.head.name, "params": head_params, "share": head_params / total,
                     "description": describe_head(built)},
            "total_params": total, "default_weights": entry.obj.default_weights}
    if trains:
        added = sum(r["added"] for r in rows) + trains.get("", {}).get("added", 0)
        data["strategy"] = {"name": strategy, "params": dict(_parse_params(params)), "added_params": added,
                            "trainable_params": sum(r["trainable"] for r in rows) + head_params + added}
    if as_json:
        print_json(data)
        return
    from rich import box
    from rich.table import Table

    table = Table(title=f"{backbone}: {len(rows)} {granularity} units, input to output", box=box.SIMPLE_HEAD)
    columns = [("#", "right"), ("unit", "left"), ("params", "right"), ("share", "right"), ("frozen by k=#+1", "right")]
    surgery = bool(trains and data["strategy"]["added_params"])
    if trains:
        columns += [(f"trains under {strategy}", "right"), ("of the unit", "right"), ("when", "left")]
        columns += [("added (trains)", "right")] if surgery else []
    for col, justify in columns:
        table.add_column(col, justify=justify)
    cumulative = 0
    for r in rows:
        cumulative += r["params"]
        cells = [str(r["index"]), r["unit"], f"{r['params']:,}", f"{100 * r['share']:.2f}%", f"{100 * cumulative / total:.1f}%"]
        if trains:
            cells += [f"{r['trainable']:,}", f"{100 * r['trainable'] / max(r['params'], 1):.0f}%", r["when"]]
            cells += [f"{r['added']:,}"] if surgery else []
        table.add_row(*cells)
    table.add_row("", f"head: {built.head.name}", f"{head_params:,}", f"{100 * head_params / total:.2f}%", "never",
                  *([f"{head_params:,}", "100%", "always"] if trains else []), *([""] if surgery else []))
    console.print(table)
    if trains:
        n = data["strategy"]["trainable_params"]
        extra = data["strategy"]["added_params"]
        console.print(f"under {strategy}: {n:,} parameters train ({100 * n / total:.2f}% of the backbone's {total:,}), head "
                      f"included" + (f", {extra:,} of them added by the strategy's surgery" if extra else ""),
                      highlight=False, markup=False)
    console.print(f"total {total:,} parameters; head {describe_head(built)}", highlight=False, markup=False)
    console.print(f"default weights: {entry.obj.default_weights}", highlight=False, markup=False)


def _parse_params(params: tuple[str, ...]) -> list[tuple[str, object]]:
    """--param NAME=VALUE pairs, numbers as numbers (as MLflow params are read back)."""
    from ..results.leaderboard import typed

    out = []
    for item in params:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise UserError(f"--param {item!r}: write NAME=VALUE, e.g. --param k=3")
        out.append((name.strip(), typed(text)))
    return out


def _under_strategy(spec, backbone: str, strategy: str, params: tuple[str, ...], granularity: str, head: str, classes: int):
    """The backbone planned under ``strategy``, and per unit: how many parameters train, and from when."""
    from ..backbone import WeightsRequest
    from ..engine.freeze import unit_trainable_params
    from ..engine.surgery import added_by_unit
    from ..engine.trial import build_and_plan
    from ..plugins import strategies
    from ..records import TrialConfig
    from ..strategy import InvalidParams

    chosen = strategies().get(strategy)
    own = dict(_parse_params(params))
    unknown = set(own) - {p.name for p in chosen.params}
    if unknown:
        raise UserError(f"Strategy {strategy!r} has no parameter {sorted(unknown)[0]!r}; its parameters: "
                        f"{', '.join(p.name for p in chosen.params) or 'none'}.")
    cfg = TrialConfig(strategy=strategy, granularity=granularity, head=head, strategy_params=own)
    try:
        built, plan = build_and_plan(cfg, classes, spec, WeightsRequest(pretrained=False), chosen)
    except InvalidParams as exc:
        raise UserError(f"Strategy {strategy!r}: {exc}") from None
    sizes = dict((n, p.numel()) for n, p in built.model.named_parameters())
    later = {u: p.epoch for p in plan.phases for u in p.unfreeze}
    added = {u: sum(sizes[n] for n in names) for u, names in added_by_unit(built).items()}
    trains: dict[str, dict] = {}
    for unit in built.units:
        names = unit_trainable_params(built, plan, [unit.name]) if unit.name in plan.trainable or unit.name in later else []
        when = "from the start" if unit.name in plan.trainable else (f"from epoch {later[unit.name]}" if unit.name in later else "frozen")
        trains[unit.name] = {"trainable": sum(sizes[n] for n in names), "when": when if names else "frozen",
                             "added": added.get(unit.name, 0)}
    if added.get(""):
        trains[""] = {"added": added[""]}  # added parameters that sit among no unit's modules
    return built, trains
