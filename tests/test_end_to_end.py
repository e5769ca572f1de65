"""A tiny real suite through the CLI: Optuna study, MLflow runs, leaderboard, resume."""

from __future__ import annotations

import json

import optuna
import pytest
from mlflow.tracking import MlflowClient

from .conftest import write_suite


def _client(results):
    return MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")


def _trial_runs(client, exp_id):
    return client.search_runs([exp_id], "tags.`freezebench.role` = 'trial'", max_results=1000)


def test_run_output_ends_with_summary_and_leaderboard(finished_suite):
    _, _, out = finished_suite
    assert "Suite tiny: per study, the search's best trial on val f1" in out
    assert "Leaderboard tinybreast (suite tiny), confirmed (mean over seeds, xN) then single trials, by val f1" in out
    assert out.count("complete val_f1=") == 3


@pytest.mark.parametrize("columns", [None, "", "wide", "0"])
def test_a_leaderboard_written_to_a_file_or_pipe_keeps_every_column(finished_suite, columns):
    """Output to a log file (no terminal; $COLUMNS unset, empty or not a width) is not laid out in 80 columns and cut."""
    import os
    import re
    import subprocess
    import sys

    _, results, _ = finished_suite
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    proc = subprocess.run([sys.executable, "-m", "freezebench", "leaderboard", "--dataset", "tinybreast", "--results-dir",
                           str(results)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if re.search(r"\bval\b.*test acc.*test auc", line))
    assert lines[header].split()[-1] == "peak" and lines[header + 1].split()[-2:] == ["MB", "time"]  # the last columns
    rows = [line for line in lines if re.match(r"\s*\d+\s+(full|freeze_to|linear_probe)\s", line)]
    assert len(rows) == 3 and all(len(re.findall(r"\d\.\d\d-\d\.\d\d", r)) == 2 for r in rows)  # both CIs, whole
    assert all(re.search(r"\d+(\.\d+)?s?\s*$", r) for r in rows)  # each row ends with its time, not cut off


def test_mlflow_holds_parent_and_nested_trial_runs(finished_suite):
    _, results, _ = finished_suite
    client = _client(results)
    exp = client.get_experiment_by_name("tinybreast")
    assert exp is not None
    parents = client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'study'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == "tiny/tinybreast/mobilenetv2_100" and parent.info.status == "FINISHED"
    assert parent.data.params["units_block"].startswith("conv_stem+bn1, blocks.0.0")
    trials = _trial_runs(client, exp.experiment_id)
    assert len(trials) == 3
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["freezebench.state"] == "complete"
        p = run.data.params
        assert p["strategy"] in ("linear_probe", "freeze_to", "full")
        assert p["split_hash"] == parent.data.params["split_hash"] and p["image_size"] == "32"
        assert ("k" in p) == (p["strategy"] == "freeze_to")
        m = run.data.metrics
        for key in ("best_val_f1", "best_val_auc", "test_accuracy", "test_f1", "test_precision", "test_recall", "test_auc", "test_loss", "trainable_params", "wall_time_s", "best_epoch"):
            assert key in m, key
        history = client.get_metric_history(run.info.run_id, "val_f1")
        assert [h.step for h in history] == [1, 2]
        assert m["best_val_f1"] == max(h.value for h in history)
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"freeze_plan.json", "trial_config.json"} <= artifacts


def test_optuna_study_matches_mlflow(finished_suite):
    _, results, _ = finished_suite
    study = optuna.load_study(study_name="tiny/tinybreast/mobilenetv2_100", storage=f"sqlite:///{results / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    client = _client(results)
    for t in study.trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.metrics["best_val_f1"] == pytest.approx(t.value)
        assert float(run.data.params["lr"]) == pytest.approx(t.params["lr"])


def test_leaderboard_ranks_by_best_validation_metric(finished_suite, cli):
    _, results, _ = finished_suite
    code, out, _ = cli("leaderboard", "--dataset", "tinybreast", "--results-dir", str(results), "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    values = [r["val_f1"] for r in rows]
    assert values == sorted(values, reverse=True)
    client = _client(results)
    for r in rows:
        run = client.get_run(r["run_id"])
        assert r["val_f1"] == run.data.metrics["best_val_f1"] and r["test_f1"] == run.data.metrics["test_f1"]
        assert r["strategy"] == run.data.params["strategy"] and isinstance(r["lr"], float)
        assert r["strategy_params"] == (f"k={run.data.params['k']}" if r["strategy"] == "freeze_to" else "-")
    code, out, _ = cli("leaderboard", "--dataset", "tinybreast", "--results-dir", str(results), "--metric", "loss", "--json")
    losses = [r["val_loss"] for r in json.loads(out)]
    assert losses == sorted(losses)
    code, out, _ = cli("leaderboard", "--dataset", "tinybreast", "--results-dir", str(results))
    assert code == 0 and "Leaderboard tinybreast" in out
    code, _, err = cli("leaderboard", "--dataset", "nope", "--results-dir", str(results))
    assert code == 2 and "Datasets with results: tinybreast" in " ".join(err.split())


def test_leaderboard_and_recommend_read_back_the_suites_own_metric_and_every_dataset_by_default(cli, tmp_path, tiny_npz):
    """A suite that chose on validation loss: `leaderboard` and `recommend` without --metric rank by loss, as the
    run did (they ranked by F1 before, and could recommend another configuration); without --dataset, every
    dataset in the store is shown."""
    config = write_suite(tmp_path / "bench.toml", tiny_npz, n_trials=3)
    config.write_text(config.read_text().replace('metric = "f1"', 'metric = "loss"'))
    results = tmp_path / "results"
    code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 0, err
    base = ("--results-dir", str(results), "--json")
    code, out, _ = cli("leaderboard", *base)
    rows = json.loads(out)
    assert code == 0 and [r["dataset"] for r in rows] == ["tinybreast"] * 3
    losses = [r["val_loss"] for r in rows]
    assert losses == sorted(losses)
    code, out, _ = cli("leaderboard", "--dataset", "tinybreast", "--metric", "loss", *base)
    assert [r["run_id"] for r in json.loads(out)] == [r["run_id"] for r in rows]
    code, out, _ = cli("recommend", *base)
    (rec,) = json.loads(out)
    assert rec["chosen_on"]["metric"] == "val_loss" and rec["model_run_id"] == rows[0]["run_id"]
    assert rec["chosen_on"]["images"] == 12  # the tiny split's validation images: 6 per class
    code, out, _ = cli("recommend", "--results-dir", str(results))
    assert "chosen on validation loss" in out and "on 12 validation images." in " ".join(out.split())
    code, out, _ = cli("leaderboard", "--results-dir", str(results))
    assert code == 0 and "by val loss" in " ".join(out.split())
    code, out, _ = cli("leaderboard", "--suite", "other", *base)
    assert code == 0 and json.loads(out) == []

    other = write_suite(tmp_path / "other.toml", tiny_npz, n_trials=1)  # a second dataset in the same store
    other.write_text(other.read_text().replace('alias = "tinybreast"', 'alias = "tinybreast2"'))
    assert cli("run", "--suite", "tiny", "--config", str(other), "--results-dir", str(results))[0] == 0
    code, out, _ = cli("leaderboard", *base)
    assert code == 0 and [r["dataset"] for r in json.loads(out)] == ["tinybreast"] * 3 + ["tinybreast2"]
    code, out, _ = cli("recommend", *base)
    assert [(r["dataset"], r["chosen_on"]["metric"]) for r in json.loads(out)] == [("tinybreast", "val_loss"),
                                                                                  ("tinybreast2", "val_f1")]
    code, _, err = cli("export", "--results-dir", str(results), "--out", str(tmp_path / "model"))
    assert code == 2 and "tinybreast, tinybreast2" in err and "--dataset" in err and not (tmp_path / "model").exists()


def test_rerun_resumes_without_repeating_and_extends(finished_suite, cli):
    config, results, _ = finished_suite
    code, out, _ = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 0 and "resuming, 3 of 3 trials already done" in out
    client = _client(results)
    exp = client.get_experiment_by_name("tinybreast")
    assert len(_trial_runs(client, exp.experiment_id)) == 3
    code, out, _ = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results), "--n-trials", "5")
    assert code == 0
    runs = _trial_runs(client, exp.experiment_id)
    assert len(runs) == 5
    # the extension continues the search: no setting of the first run comes back
    settings = {tuple(sorted((k, r.data.params[k]) for k in ("strategy", "lr", "k") if k in r.data.params)) for r in runs}
    assert len(settings) == 5
    assert len(client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'study'")) == 1


def test_diverging_trials_are_recorded_as_failed_and_the_suite_goes_on(tmp_path, tiny_npz, cli):
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='"full"', n_trials=2)
    config.write_text(config.read_text().replace("lr = { low = 1e-3, high = 1e-2, log = true }", "lr = [1e30, 1e31]"))
    results = tmp_path / "results"
    code, out, _ = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 0
    assert out.count("failed DivergedError: non-finite training loss") == 2 and "2 fail" in out
    client = _client(results)
    runs = _trial_runs(client, client.get_experiment_by_name("tinybreast").experiment_id)
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FAILED" and run.data.tags["freezebench.state"] == "failed"
        assert "DivergedError: non-finite" in run.data.tags["freezebench.fail_reason"]
    study = optuna.load_study(study_name="tiny/tinybreast/mobilenetv2_100", storage=f"sqlite:///{results / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    assert all("non-finite" in t.user_attrs["fail_reason"] for t in study.trials)


def test_interrupted_trial_is_run_again_on_resume(tmp_path, tiny_npz, cli, monkeypatch):
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='"linear_probe"', n_trials=2)
    results = tmp_path / "results"
    import freezebench.suite.runner as runner

    real_run_trial, calls = runner.run_trial, []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run_trial(*args, **kwargs)

    monkeypatch.setattr(runner, "run_trial", interrupt_second)
    code, _, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 130 and "run the same command again to resume" in " ".join(err.split())
    client = _client(results)
    exp_id = client.get_experiment_by_name("tinybreast").experiment_id
    parent = client.search_runs([exp_id], "tags.`freezebench.role` = 'study'")[0]
    assert parent.info.status == "KILLED"
    monkeypatch.setattr(runner, "run_trial", real_run_trial)
    code, out, _ = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 0 and "resuming, 1 of 2 trials already done" in out
    study = optuna.load_study(study_name="tiny/tinybreast/mobilenetv2_100", storage=f"sqlite:///{results / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    # the interrupted trial's settings ran first on resume: retried, not lost, not replaced by trial 0's
    assert study.trials[2].params == study.trials[1].params != study.trials[0].params
    assert study.trials[2].user_attrs["freezebench.retry_of"] == 1
    statuses = sorted(r.info.status for r in _trial_runs(client, exp_id))
    assert statuses == ["FINISHED", "FINISHED", "KILLED"]
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_trial_runs_record_weights_versions_and_figures(finished_suite):
    _, results, _ = finished_suite
    client = _client(results)
    exp = client.get_experiment_by_name("tinybreast")
    run = _trial_runs(client, exp.experiment_id)[0]
    assert run.data.params["weights_sha256"] == "545799184f77823ee74e8527002cd9eeda45142333be07690d73473fa5a3243f"
    assert run.data.params["weights_source"] == "shipped:mobilenetv2_100.imagenet.safetensors"
    import timm
    import torch

    assert run.data.tags["freezebench.torch_version"] == torch.__version__.split("+")[0] or run.data.tags["freezebench.torch_version"] == torch.__version__
    assert run.data.tags["freezebench.timm_version"] == timm.__version__ and run.data.tags["freezebench.version"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"test_confusion_matrix.json", "test_confusion_matrix.png", "test_roc.png"} <= artifacts
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        matrix = json.load(open(client.download_artifacts(run.info.run_id, "test_confusion_matrix.json", tmp)))
        png = client.download_artifacts(run.info.run_id, "test_roc.png", tmp)
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert sum(map(sum, matrix["matrix"])) == 12 and matrix["classes"] == ["0", "1"]
    correct = matrix["matrix"][0][0] + matrix["matrix"][1][1]
    assert correct / 12 == pytest.approx(run.data.metrics["test_accuracy"])


def test_leaderboard_is_stored_with_the_experiment(finished_suite):
    _, results, _ = finished_suite
    client = _client(results)
    exp = client.get_experiment_by_name("tinybreast")
    boards = client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'leaderboard'")
    assert len(boards) == 1
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        csv_text = open(client.download_artifacts(boards[0].info.run_id, "leaderboard.csv", tmp)).read()
        md = open(client.download_artifacts(boards[0].info.run_id, "leaderboard.md", tmp)).read()
    assert csv_text.splitlines()[0].startswith("rank,run_name,study,backbone,strategy")
    assert len(csv_text.splitlines()) == 1 + len(_trial_runs(client, exp.experiment_id))
    assert md.startswith("# Leaderboard: tinybreast") and "| 1 |" in md
    assert "Leaderboard: tinybreast" in boards[0].data.tags["mlflow.note.content"]  # shown on the run's page


def test_leaderboard_group_by_strategy(finished_suite, cli):
    _, results, _ = finished_suite
    code, out, _ = cli("leaderboard", "--dataset", "tinybreast", "--results-dir", str(results), "--group-by", "strategy", "--json")
    rows = json.loads(out)
    strategies = [r["strategy"] for r in rows]
    assert len(strategies) == len(set(strategies)) and [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    code, out, _ = cli("leaderboard", "--dataset", "tinybreast", "--results-dir", str(results), "--json")
    every = json.loads(out)
    for r in rows:  # each group's row is that strategy's best trial
        assert r["val_f1"] == max(x["val_f1"] for x in every if x["strategy"] == r["strategy"])


def test_cheapest_first_puts_the_tied_rows_first_by_cost(finished_suite, cli):
    _, results, _ = finished_suite
    base = ("leaderboard", "--dataset", "tinybreast", "--results-dir", str(results), "--json")
    every = json.loads(cli(*base)[1])
    for cost, key in (("params", "trainable_params"), ("time", "epoch_time_s"), ("memory", "peak_memory_mb")):
        code, out, err = cli(*base, "--cheapest-first", cost)
        assert code == 0, err
        rows = json.loads(out)
        assert sorted(r["run_id"] for r in rows) == sorted(r["run_id"] for r in every)  # the same rows, reordered
        tied = [r for r in rows if r["tied_with_first"]]
        assert rows[: len(tied)] == tied and tied  # the first row is always tied with itself
        assert [r[key] for r in tied] == sorted(r[key] for r in tied)
        assert [r["rank"] for r in rows[len(tied):]] == sorted(r["rank"] for r in rows[len(tied):])
    code, out, _ = cli("leaderboard", "--dataset", "tinybreast", "--results-dir", str(results), "--cheapest-first", "params")
    assert code == 0 and "cheapest first by params" in " ".join(out.split())
    code, _, err = cli(*base, "--cheapest-first", "carbon")
    assert code == 2 and "carbon" in err


def test_top_configurations_confirmed_over_seeds(tmp_path, tiny_npz, cli):
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='"linear_probe"', n_trials=2,
                         confirm="{ top = 1, seeds = [5, 6] }")
    results = tmp_path / "results"
    code, out, _ = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 0 and "confirmed (seed 5, top 1)" in out and "confirmed (seed 6, top 1)" in out
    code, out, _ = cli("leaderboard", "--dataset", "tinybreast", "--results-dir", str(results), "--json")
    rows = json.loads(out)
    assert len(rows) == 2  # confirmation runs are not leaderboard rows of their own
    top = rows[0]
    assert top["seeds"] == 3 and top["confirmed"] and "test_f1_std" in top and rows[1]["seeds"] == 1
    client = _client(results)
    exp = client.get_experiment_by_name("tinybreast")
    confirms = client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'confirm'")
    assert sorted(int(r.data.params["seed"]) for r in confirms) == [5, 6]
    assert all(r.data.tags["freezebench.confirm_of"] == top["run_id"] for r in confirms)
    f1s = [client.get_run(top["run_id"]).data.metrics["test_f1"]] + [r.data.metrics["test_f1"] for r in confirms]
    assert top["test_f1"] == pytest.approx(sum(f1s) / 3)
    assert top["test_f1_ci"][0] <= top["test_f1"] <= top["test_f1_ci"][1]
    code, out, _ = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert "confirmed (seed" not in out  # already done: resumed, not repeated


def test_every_trial_records_its_cost(finished_suite):
    """Trainable parameters, time per epoch and peak memory, so configurations can be compared on cost too."""
    _, results, _ = finished_suite
    client = _client(results)
    exp = client.get_experiment_by_name("tinybreast")
    for run in _trial_runs(client, exp.experiment_id):
        m = run.data.metrics
        epochs = sorted(client.get_metric_history(run.info.run_id, "epoch_seconds"), key=lambda x: x.step)
        assert len(epochs) == 2 and all(e.value > 0 for e in epochs)
        assert m["epoch_time_s"] == pytest.approx(sum(e.value for e in epochs) / 2)
        assert m["epoch_time_s"] < m["wall_time_s"] and 0 < m["trainable_params"] <= m["total_params"]
        assert m["peak_memory_mb"] > 50 and run.data.tags["freezebench.peak_memory_of"] == "process max RSS"
