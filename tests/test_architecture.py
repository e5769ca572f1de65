"""The house's shape: layers import one way, no import loops, light modules stay light, every hook
is documented with its signature, and each fact (trial parameters, best-per-group) lives once."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from freezebench import plugins
from freezebench.analysis import best_per_group
from freezebench.records import PARAMS, TrialConfig, params_markdown

from .conftest import ROOT

PACKAGE = ROOT / "freezebench"
# which layers each layer may import (docs/architecture.md)
ALLOWED = {
    "contracts": {"contracts"},
    "engine": {"engine", "contracts"},
    "results": {"results", "contracts"},
    "suite": {"suite", "engine", "results", "contracts"},
    "cli": {"cli", "suite", "engine", "results", "contracts"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("engine", "suite", "results", "cli"):
        return parts[1]
    return "cli" if module == "freezebench.__main__" else "contracts"


def import_graph() -> dict[str, set[str]]:
    """module -> the freezebench modules it imports, anywhere in the file (functions included)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                candidates = [f"{base}.{a.name}" for a in node.names] + [base]  # a submodule, else the module
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            found = [c for c in candidates[:-1] if c in modules] if isinstance(node, ast.ImportFrom) else []
            targets.update(found or [c for c in candidates if c in modules][:1])
        graph[name] = targets - {name}
    return graph


def test_layers_import_one_way():
    graph = import_graph()
    assert {"freezebench.suite.runner", "freezebench.engine.trial", "freezebench.results.tracking"} <= set(graph)
    wrong = [f"{a} -> {b}" for a, targets in graph.items() for b in targets if _layer(b) not in ALLOWED[_layer(a)]]
    assert wrong == []


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, loops = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return loops


def test_no_import_loops():
    assert import_loops(import_graph()) == []


def test_the_loop_check_can_fail():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_loops(graph) == [["a", "b", "c"]]
    graph = import_graph()
    graph["freezebench.records"] = graph["freezebench.records"] | {"freezebench.suite.runner"}
    assert any("freezebench.records" in loop for loop in import_loops(graph))
    assert "freezebench.records -> freezebench.suite.runner" in [
        f"{a} -> {b}" for a, t in graph.items() for b in t if _layer(b) not in ALLOWED[_layer(a)]]


@pytest.mark.parametrize("module", ["freezebench.suite.config", "freezebench.results.leaderboard", "freezebench.cli.results",
                                    "freezebench.records", "freezebench.strategy", "freezebench.analysis"])
def test_light_modules_import_no_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'timm', 'mlflow', 'optuna') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_listing_strategies_datasets_and_analyses_loads_no_torch():
    """Every plugin is loaded for a listing; only building a model may import torch."""
    code = ("import sys; from freezebench import plugins; plugins.strategies(); plugins.datasets(); plugins.analyses(); "
            "print(len(plugins.list_plugins()), sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    count, loaded = result.stdout.split(" ", 1)
    assert int(count) >= 10 and loaded.strip() == "[]"


def test_every_hook_signature_is_documented():
    guide = (ROOT / "docs" / "plugin-guide.md").read_text()
    hooks = plugins.get_plugin_manager().hook
    names = [name for name in vars(hooks) if not name.startswith("_")]
    assert {"trial_started", "epoch_ended", "trial_trained", "trial_finished", "study_finished"} <= set(names)
    for name in names:
        caller = getattr(hooks, name)
        signature = f"`{name}({', '.join(caller.spec.argnames)})`"
        assert signature in guide, f"{signature} is not in docs/plugin-guide.md"
        assert caller.spec.function.__doc__, f"hook {name} has no docstring"


def test_trial_parameters_come_from_one_table():
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert params_markdown() in text, "docs/configuration.md's parameter table differs from freezebench.records"
    cfg = TrialConfig(strategy="full", lr=0.1)
    assert all(getattr(cfg, name) == spec.default for name, spec in PARAMS.items() if not spec.required)
    assert {n for n, s in PARAMS.items() if s.required} == {"strategy", "lr"}


def _trial(run_id: str, strategy: str, loss: float, f1: float, state: str = "complete") -> dict:
    return {"run_id": run_id, "state": state, "params": {"strategy": strategy},
            "metrics": {"best_val_loss": loss, "best_val_f1": f1}}


def test_best_per_group_follows_the_metric_direction():
    trials = [_trial("a", "full", 0.9, 0.8), _trial("b", "full", 0.3, 0.6), _trial("c", "linear_probe", 0.5, 0.7),
              _trial("d", "linear_probe", 0.1, 0.9, state="failed")]
    by_strategy = lambda t: t["params"]["strategy"]  # noqa: E731
    assert {k: t["run_id"] for k, t in best_per_group(trials, "loss", by_strategy).items()} == {"full": "b", "linear_probe": "c"}
    assert {k: t["run_id"] for k, t in best_per_group(trials, "f1", by_strategy).items()} == {"full": "a", "linear_probe": "c"}


def test_best_per_case_and_the_report_pick_lowest_loss():
    from freezebench.analysis import StudyRecords, best_per_case

    trials = [_trial("a", "full", 0.9, 0.8), _trial("b", "full", 0.3, 0.6)]
    assert best_per_case(StudyRecords("s", "d", "loss", trials=trials))["full"]["run_id"] == "b"
    assert best_per_case(StudyRecords("s", "d", "f1", trials=trials))["full"]["run_id"] == "a"


def test_strategies_declare_their_own_colours():
    from freezebench.analysis import colour

    assert colour("linear_probe") == plugins.strategies().get("linear_probe").colour
    assert colour("no_such_strategy").startswith("#")
