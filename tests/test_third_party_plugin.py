"""The third-party path for real: pip-install the example plugin package and use its strategy."""

from __future__ import annotations

import json

import pytest

from .conftest import ROOT, pip_install, run_cli_subprocess, write_suite

EXAMPLE = ROOT / "examples" / "freezebench-plugin-example"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """``pip install`` the example package (no deps: freezebench is already here) into its own target."""
    target = tmp_path_factory.mktemp("site")
    env = pip_install(EXAMPLE, target)
    assert list(target.glob("freezebench_plugin_example-*.dist-info"))
    return env


def test_installed_strategy_is_listed(installed_plugin):
    result = run_cli_subprocess("list", "strategies", "--json", env_extra=installed_plugin)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["freeze_fraction"]["plugin"] == "freeze_fraction" and rows["freeze_fraction"]["params"] == ["fraction"]
    plugins = {p["name"]: p for p in json.loads(run_cli_subprocess("plugins", "--json", env_extra=installed_plugin).stdout)}
    assert plugins["freeze_fraction"]["distribution"] == "freezebench-plugin-example"
    # without the install, it is not there
    assert "freeze_fraction" not in run_cli_subprocess("list", "strategies", "--json").stdout


def test_suite_uses_installed_strategy(installed_plugin, tmp_path, tiny_npz):
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='"freeze_fraction"', n_trials=2)
    config.write_text(config.read_text().replace("k = { low = 1, high = -1 }", "fraction = [0.25, 0.75]"))
    results = tmp_path / "results"
    result = run_cli_subprocess("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results),
                                env_extra=installed_plugin)
    assert result.returncode == 0, result.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinybreast")
    runs = client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'trial'")
    assert len(runs) == 2
    for run in runs:
        assert run.data.params["strategy"] == "freeze_fraction" and run.info.status == "FINISHED"
        fraction = float(run.data.params["fraction"])
        frozen = run.data.tags["freezebench.frozen_units"].split(",")
        assert len(frozen) == int(fraction * 8)  # mobilenetv2_100 has 8 units
