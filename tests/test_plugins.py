"""Plugin discovery through real entry points, duplicates, unknown names, broken plugins."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass

import pytest

from freezebench import plugins
from freezebench.errors import PluginError, UserError
from freezebench.hookspecs import hookimpl
from freezebench.strategy import plan_from_frozen

from .conftest import ROOT, run_cli_subprocess


def test_first_party_plugins_load_through_entry_points(fresh_plugins):
    found = {p.name: p for p in plugins.list_plugins()}
    assert {"medmnist", "timm", "strategies"} <= set(found)
    assert found["timm"].distribution == "freezebench"
    assert found["timm"].hooks == ("register_backbones",)
    assert found["medmnist"].hooks == ("register_datasets",)
    assert found["strategies"].module == "freezebench_plugins.basic_strategies"


def test_registries_hold_first_party_components(fresh_plugins):
    assert {"linear_probe", "full", "scratch", "freeze_to"} <= {e.name for e in plugins.strategies().entries()}
    assert plugins.datasets().entry("breastmnist").plugin == "medmnist"
    assert plugins.backbones().entry("mobilenetv2_100").plugin == "timm"
    matched = [e.name for e in plugins.backbones().entries("resnet1?")]
    assert "resnet18" in matched and all(len(n) == 8 and n.startswith("resnet1") for n in matched)


@dataclass(frozen=True)
class _Copycat:
    name: str = "full"
    summary: str = "a second strategy called full"
    params: tuple = ()
    pretrained: bool = True

    def plan(self, units, params):
        return plan_from_frozen(units, (), params)


class _CopycatPlugin:
    @hookimpl
    def register_strategies(self, register):
        register(_Copycat())


def test_duplicate_name_fails_naming_both_plugins(fresh_plugins):
    plugins.register_plugin(_CopycatPlugin(), name="copycat")
    with pytest.raises(PluginError) as exc:
        plugins.strategies()
    message = str(exc.value)
    assert "'full'" in message and "'strategies'" in message and "'copycat'" in message


def test_inline_plugin_registers_and_unregisters(fresh_plugins):
    class Extra:
        @hookimpl
        def register_strategies(self, register):
            register(_Copycat(name="inline_full"))

    plugins.register_plugin(Extra(), name="extra")
    assert "inline_full" in plugins.strategies()
    plugins.unregister_plugin("extra")
    assert "inline_full" not in plugins.strategies()


def test_unknown_name_lists_installed_and_suggests(fresh_plugins):
    with pytest.raises(UserError) as exc:
        plugins.strategies().get("ful")
    message = str(exc.value)
    assert "Unknown strategy: 'ful'" in message
    assert "Did you mean: full" in message
    assert "linear_probe" in message and "freeze_to" in message
    with pytest.raises(UserError, match="freezebench list backbones"):
        plugins.backbones().get("no_such_net")


def _fake_distribution(tmp_path, name: str, module_source: str, entry_name: str):
    """A minimal installed distribution (dist-info + module) on a path entry."""
    dist = tmp_path / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[freezebench]\n{entry_name} = {name.replace('-', '_')}\n")
    (tmp_path / f"{name.replace('-', '_')}.py").write_text(textwrap.dedent(module_source))
    return tmp_path


def test_broken_plugin_is_reported_by_name(tmp_path, fresh_plugins, monkeypatch):
    path = _fake_distribution(tmp_path, "fb-broken", "import no_such_module_anywhere\n", "broken")
    monkeypatch.syspath_prepend(str(path))
    with pytest.raises(PluginError) as exc:
        plugins.get_plugin_manager()
    message = str(exc.value)
    assert "'broken'" in message and "fb-broken" in message and "no_such_module_anywhere" in message
    assert "FREEZEBENCH_DISABLE_PLUGINS=broken" in message
    # ... and can be switched off
    plugins.reset()
    monkeypatch.setenv("FREEZEBENCH_DISABLE_PLUGINS", "broken")
    assert "broken" not in {p.name for p in plugins.list_plugins()}


def test_load_plugins_env_restricts(fresh_plugins, monkeypatch):
    monkeypatch.setenv("FREEZEBENCH_LOAD_PLUGINS", "strategies")
    assert [p.name for p in plugins.list_plugins()] == ["strategies"]
    assert plugins.backbones().entries() == []


def test_cli_reports_broken_and_duplicate_plugins(tmp_path):
    (tmp_path / "a").mkdir()
    broken = _fake_distribution(tmp_path / "a", "fb-broken", "raise RuntimeError('boom')\n", "broken")
    result = run_cli_subprocess("plugins", env_extra={"PYTHONPATH": str(broken)})
    assert result.returncode == 2
    assert "Error importing plugin 'broken'" in result.stderr and "boom" in result.stderr
    assert "Traceback" not in result.stderr

    (tmp_path / "b").mkdir()
    copy = _fake_distribution(
        tmp_path / "b",
        "fb-copycat",
        """
        from freezebench.hookspecs import hookimpl
        from freezebench_plugins.basic_strategies import Full

        @hookimpl
        def register_strategies(register):
            register(Full())
        """,
        "copycat",
    )
    result = run_cli_subprocess("list", "strategies", env_extra={"PYTHONPATH": str(copy)})
    assert result.returncode == 2
    assert "Duplicate strategy name 'full'" in result.stderr
    assert "'strategies'" in result.stderr and "'copycat'" in result.stderr


def test_plugins_and_list_json(cli, fresh_plugins):
    code, out, _ = cli("plugins", "--json")
    assert code == 0
    names = {p["name"]: p for p in json.loads(out)}
    assert names["strategies"]["hooks"] == ["register_strategies"]
    code, out, _ = cli("list", "strategies", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["freeze_to"]["params"] == ["k"] and rows["scratch"]["pretrained"] is False
    code, out, _ = cli("list", "backbones", "mobilenetv2_1*", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["mobilenetv2_100"]["default_weights"] == "shipped"
    assert all(name.startswith("mobilenetv2_1") for name in rows)
    code, out, _ = cli("list", "datasets", "--json")
    assert {"breastmnist", "medmnist_npz"} <= {r["name"] for r in json.loads(out)}


def test_main_module_entry():
    result = run_cli_subprocess("--version")
    assert result.returncode == 0 and "freezebench" in result.stdout


def test_every_hook_is_documented_and_tested():
    from freezebench import hookspecs

    hooks = [name for name in dir(hookspecs) if name.startswith("register_")]
    guide = (ROOT / "docs" / "plugin-guide.md").read_text()
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    for hook in hooks:
        assert f"`{hook}(register)`" in guide, f"{hook} is not documented in docs/plugin-guide.md"
        kind = hook.removeprefix("register_")
        assert f"plugins.{kind}()" in tests, f"{hook} is not exercised by the tests"
