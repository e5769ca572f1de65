"""A search never trains the same settings twice: a proposal that repeats an earlier trial's settings
trains nothing, records no run, and does not count toward n_trials; a grid counts its distinct settings
(points that differ only in a parameter their strategy does not read are one); a space that has run
out of new settings ends the search with a note instead of looping."""

from __future__ import annotations

import json

import optuna
from mlflow.tracking import MlflowClient

from freezebench import plugins
from freezebench.suite.config import load_config
from freezebench.suite.search import grid_size

from .conftest import write_suite


def _runs(results):
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinybreast")
    return client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'trial'")


def _settings(run):
    return (run.data.params["strategy"], run.data.params.get("k"), run.data.params["lr"])


def _declared():
    return {p.name: e.name for e in plugins.strategies().entries() for p in e.obj.params}


def test_a_grid_trains_each_distinct_setting_once(cli, tmp_path, tiny_npz):
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='["linear_probe", "freeze_to"]', n_trials=50,
                         extra='sampler = "grid"')
    config.write_text(config.read_text().replace("k = { low = 1, high = -1 }", "k = [2, 6]")
                      .replace("lr = { low = 1e-3, high = 1e-2, log = true }", "lr = [1e-3, 1e-2]")
                      .replace("epochs = 2", "epochs = 1"))
    suite = load_config(config, _declared()).suite("tiny")
    # 2 strategies x 2 k x 2 lr = 8 points; linear_probe does not read k: 2 + 4 = 6 settings
    assert grid_size(suite, plugins.strategies(), {"block": 8}) == 6
    results = tmp_path / "results"
    code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 0, err
    runs = _runs(results)
    settings = [_settings(r) for r in runs]
    assert len(settings) == len(set(settings)) == 6  # each distinct setting once
    assert {s for s in settings if s[0] == "linear_probe"} == {("linear_probe", None, "0.001"), ("linear_probe", None, "0.01")}
    study = optuna.load_study(study_name="tiny/tinybreast/mobilenetv2_100", storage=f"sqlite:///{results / 'optuna.db'}")
    repeats = [t for t in study.trials if "freezebench.repeat_of" in t.user_attrs]
    for t in repeats:  # each repeat points at a trained trial with the same settings, and got its value
        first = study.trials[t.user_attrs["freezebench.repeat_of"]]
        assert first.user_attrs["freezebench.settings"] == t.user_attrs["freezebench.settings"]
        assert "mlflow_run_id" not in t.user_attrs and t.value == first.value
    assert len(study.trials) == 6 + len(repeats)
    assert "6 trials" in " ".join(out.split())


def test_a_space_with_fewer_settings_than_n_trials_ends_with_a_note(cli, tmp_path, tiny_npz):
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='"linear_probe"', n_trials=4)
    config.write_text(config.read_text().replace("lr = { low = 1e-3, high = 1e-2, log = true }", "lr = [1e-3, 1e-2]")
                      .replace("epochs = 2", "epochs = 1"))
    results = tmp_path / "results"
    code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 0, err
    settings = [_settings(r) for r in _runs(results)]
    assert sorted(settings) == [("linear_probe", None, "0.001"), ("linear_probe", None, "0.01")]
    text = " ".join((out + err).split())
    assert "the search space has no more new settings" in text and "2 of 4 trials" in text
    study = optuna.load_study(study_name="tiny/tinybreast/mobilenetv2_100", storage=f"sqlite:///{results / 'optuna.db'}")
    keys = [json.loads(t.user_attrs["freezebench.settings"])["lr"] for t in study.trials
            if "freezebench.repeat_of" not in t.user_attrs]
    assert sorted(keys) == [0.001, 0.01]
