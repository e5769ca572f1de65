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


def _run(config, results, env):
    """Run the suite with the plugin installed; its MLflow client and trial runs."""
    from mlflow.tracking import MlflowClient

    result = run_cli_subprocess("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results), env_extra=env)
    assert result.returncode == 0, result.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinybreast")
    return client, client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'trial'")


def test_suite_uses_installed_strategy(installed_plugin, tmp_path, tiny_npz):
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='"freeze_fraction"', n_trials=2)
    config.write_text(config.read_text().replace("k = { low = 1, high = -1 }", "fraction = [0.25, 0.75]"))
    _, runs = _run(config, tmp_path / "results", installed_plugin)
    assert len(runs) == 2
    for run in runs:
        assert run.data.params["strategy"] == "freeze_fraction" and run.info.status == "FINISHED"
        fraction = float(run.data.params["fraction"])
        frozen = run.data.tags["freezebench.frozen_units"].split(",")
        assert len(frozen) == int(fraction * 8)  # mobilenetv2_100 has 8 units


def test_one_installed_strategy_per_extension_point_is_searched_next_to_the_built_ins(installed_plugin, tmp_path, tiny_npz):
    """The example package's selector, surgery and adaptive strategies, installed with pip, run in one grid
    search beside linear probing and full fine-tuning: each of the six strategies exactly once, each
    recorded with what its plan did (its selector, its added modules, its controller's decisions)."""
    mine = ["freeze_fraction", "pointwise_tuning", "parallel_adapters", "freeze_when_still"]
    strategies = json.dumps(mine + ["linear_probe", "full"])
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy=strategies, n_trials=6, extra='sampler = "grid"')
    config.write_text(config.read_text().replace("k = { low = 1, high = -1 }", "k = 3\nthreshold = 100.0")
                      .replace("lr = { low = 1e-3, high = 1e-2, log = true }", "lr = 0.01"))
    results = tmp_path / "results"
    client, runs = _run(config, results, installed_plugin)
    assert sorted(r.data.params["strategy"] for r in runs) == sorted(json.loads(strategies))
    assert all(r.info.status == "FINISHED" for r in runs)
    by = {r.data.params["strategy"]: r for r in runs}

    def plan_of(name):
        return json.load(open(client.download_artifacts(by[name].info.run_id, "freeze_plan.json", str(tmp_path))))

    assert plan_of("pointwise_tuning")["param_filter"] == "_pointwise"
    assert plan_of("parallel_adapters")["surgery"] == "parallel 1x1 adapters in 5 units"  # units 3..7 of 8
    trainable = {name: run.data.metrics["trainable_params"] for name, run in by.items()}
    assert trainable["linear_probe"] < trainable["parallel_adapters"] < trainable["full"]
    assert plan_of("freeze_when_still")["controller"] == "_FreezeWhenStill"
    history = client.get_metric_history(by["freeze_when_still"].info.run_id, "trainable_units")
    assert [m.value for m in history] and history[-1].value < 8  # threshold 100: the first unit froze after epoch 1
    board = run_cli_subprocess("leaderboard", "--results-dir", str(results), "--dataset", "tinybreast", "--json",
                               env_extra=installed_plugin)
    assert board.returncode == 0, board.stderr
    data = json.loads(board.stdout)
    rows = data["rows"] if isinstance(data, dict) else data
    assert sorted(r["strategy"] for r in rows) == sorted(json.loads(strategies))
