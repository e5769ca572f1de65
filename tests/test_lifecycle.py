"""The trial lifecycle: plugins are called at named points, in order, with what the hooks promise;
their outputs are stored and reported; a plugin outside the tree joins with a pip install."""

from __future__ import annotations

import json

import pytest

from freezebench import Output, hookimpl, plugins
from freezebench.analysis import pyplot

from .conftest import ROOT, pip_install, run_cli_subprocess, write_suite

EXAMPLE = ROOT / "examples" / "freezebench-analysis-example"


class Recorder:
    """A plugin that records every lifecycle call and adds one output per trial."""

    def __init__(self):
        self.calls: list[tuple] = []

    @hookimpl
    def trial_started(self, trial):
        assert trial.optimizer is not None and trial.history == []
        trainable = {id(p) for g in trial.optimizer.param_groups for p in g["params"]}
        assert trainable == {id(p) for p in trial.backbone.model.parameters() if p.requires_grad}
        self.calls.append(("trial_started", trial.config.strategy))

    @hookimpl
    def epoch_ended(self, trial, epoch, record):
        assert len(trial.history) == epoch and trial.history[-1] is record
        self.calls.append(("epoch_ended", epoch, sorted(record)))

    @hookimpl
    def trial_trained(self, trial):
        assert trial.outputs is not None and len(trial.test_labels) == len(trial.outputs.labels)
        self.calls.append(("trial_trained", tuple(trial.test_images.shape[1:])))
        fig, ax = pyplot().subplots()
        ax.plot([0, 1], [1, 0])
        return [Output("recorder.png", figure=fig, title="recorder", section="Recorder"),
                Output("recorder.json", data={"strategy": trial.config.strategy}, in_report=False)]

    @hookimpl
    def trial_finished(self, result, run_id):
        self.calls.append(("trial_finished", result.config.strategy, run_id))

    @hookimpl
    def study_finished(self, summary):
        self.calls.append(("study_finished", summary.study, summary.counts.get("complete")))


@pytest.fixture
def recorder(fresh_plugins):
    plugin = Recorder()
    plugins.register_plugin(plugin, name="recorder")
    yield plugin
    plugins.unregister_plugin("recorder")


def test_hooks_are_called_in_order_with_what_they_promise(recorder, cli, tmp_path, tiny_npz):
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='["linear_probe", "full"]', n_trials=2)
    results = tmp_path / "results"
    code, _, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 0, err
    names = [c[0] for c in recorder.calls]
    per_trial = ["trial_started", "epoch_ended", "epoch_ended", "trial_trained", "trial_finished"]
    assert names == per_trial * 2 + ["study_finished"]
    epochs = [c for c in recorder.calls if c[0] == "epoch_ended"]
    assert [c[1] for c in epochs] == [1, 2, 1, 2] and all("val_f1" in c[2] and "train_loss" in c[2] for c in epochs)
    assert {c[1] for c in recorder.calls if c[0] == "trial_trained"} == {(3, 32, 32)}
    assert recorder.calls[-1] == ("study_finished", "tiny/tinybreast/mobilenetv2_100", 2)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    for _, strategy, run_id in (c for c in recorder.calls if c[0] == "trial_finished"):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["strategy"] == strategy
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert {"recorder.png", "recorder.json", "outputs.json", "test_roc.png"} <= artifacts
        manifest = {e["name"]: e for e in json.loads(open(client.download_artifacts(run_id, "outputs.json", str(tmp_path))).read())}
        assert manifest["recorder.png"]["section"] == "Recorder" and manifest["test_roc.png"]["section"] == "Test set"
        assert "recorder.json" not in manifest  # data outputs are logged, not shown

    code, _, err = cli("report", "--suite", "tiny", "--results-dir", str(results), "--out", str(tmp_path / "report"))
    assert code == 0, err
    page = (tmp_path / "report" / "tiny.html").read_text()
    assert "Recorder: the best trial of each strategy" in page and "full: recorder" in page and "linear_probe: recorder" in page


def test_a_failing_hook_fails_the_trial_with_its_reason(fresh_plugins, cli, tmp_path, tiny_npz):
    class Broken:
        @hookimpl
        def epoch_ended(self, epoch):
            raise RuntimeError(f"plugin refused epoch {epoch}")

    plugins.register_plugin(Broken(), name="broken")
    try:
        config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='"linear_probe"', n_trials=1)
        code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(tmp_path / "r"))
    finally:
        plugins.unregister_plugin("broken")
    assert code == 0 and "RuntimeError: plugin refused epoch 1" in out + err


def test_a_hook_asking_for_an_unknown_argument_is_refused_by_name(fresh_plugins):
    from freezebench.errors import PluginError

    class Wrong:
        @hookimpl
        def trial_started(self, trial, model_name):
            pass

    with pytest.raises(PluginError, match="Plugin 'wrong' does not fit freezebench's hooks"):
        plugins.register_plugin(Wrong(), name="wrong")


def test_feature_maps_cost_nothing_when_disabled(monkeypatch, tiny_dataset):
    from freezebench.backbone import WeightsRequest
    from freezebench.engine.trial import DataCache, run_trial
    from freezebench.records import TrialConfig

    cfg = TrialConfig(strategy="linear_probe", lr=0.001, epochs=1, batch_size=8, image_size=32)

    def trial():
        return run_trial(cfg, tiny_dataset, plugins.backbones().get("mobilenetv2_100"), WeightsRequest(True),
                         plugins.strategies().get("linear_probe"), DataCache())

    plugins.reset()
    with_maps = trial()
    monkeypatch.setenv("FREEZEBENCH_DISABLE_PLUGINS", "feature_maps")
    plugins.reset()
    try:
        without = trial()
        assert "feature_maps" not in {p.name for p in plugins.list_plugins()}
    finally:
        monkeypatch.delenv("FREEZEBENCH_DISABLE_PLUGINS")
        plugins.reset()
    assert with_maps.outputs.saliency is not None and without.outputs.saliency is None
    assert with_maps.outcome.test == without.outcome.test  # inspection changes nothing that is measured


@pytest.fixture(scope="module")
def installed_analysis(tmp_path_factory):
    return pip_install(EXAMPLE, tmp_path_factory.mktemp("site"))


def test_an_installed_analysis_plugin_appears_in_the_report(installed_analysis, tmp_path, tiny_npz):
    listed = {p["name"]: p for p in json.loads(run_cli_subprocess("plugins", "--json", env_extra=installed_analysis).stdout)}
    assert listed["brightness"]["hooks"] == ["trial_trained"]
    assert listed["brightness"]["distribution"] == "freezebench-analysis-example"
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='["linear_probe", "full"]', n_trials=2)
    results = tmp_path / "results"
    env = {**installed_analysis, "FREEZEBENCH_TRACE_PLUGINS": "1"}
    run = run_cli_subprocess("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results), env_extra=env)
    assert run.returncode == 0, run.stderr
    assert "[freezebench plugins]" in run.stderr
    for hook in ("trial_started", "epoch_ended", "trial_trained", "trial_finished", "study_finished"):
        assert f"{hook} [hook]" in run.stderr, f"{hook} is not traced"
    report = run_cli_subprocess("report", "--suite", "tiny", "--results-dir", str(results), "--out", str(tmp_path / "out"),
                                env_extra=installed_analysis)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "out" / "tiny.html").read_text()
    assert "Data checks: the best trial of each strategy" in page
    assert "linear_probe: brightness" in page and "full: brightness" in page
    # without the plugin installed, a new run has no such figure: it came from the plugin alone
    again = run_cli_subprocess("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(tmp_path / "plain"))
    assert again.returncode == 0, again.stderr
    report = run_cli_subprocess("report", "--suite", "tiny", "--results-dir", str(tmp_path / "plain"), "--out", str(tmp_path / "o2"))
    assert "brightness" not in (tmp_path / "o2" / "tiny.html").read_text()
