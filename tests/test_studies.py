"""The trial cap holds when workers race for the last slot: numbering decides, surplus trials are
marked, left out of every count and give their grid point back."""

from __future__ import annotations

import math

import optuna
import pytest
from mlflow.tracking import MlflowClient

from freezebench.suite.studies import claims_slot, is_finished, is_surplus, release_surplus

from .conftest import write_suite

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(tmp_path, sampler=None):
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="s", sampler=sampler)


def test_the_lowest_numbered_live_trials_get_the_slots(tmp_path):
    study = _study(tmp_path)
    t0, t1, t2 = study.ask(), study.ask(), study.ask()  # three workers start at once; the cap is 2
    assert [claims_slot(t, 2) for t in (t0, t1, t2)] == [True, True, False]
    release_surplus(t2)
    study.tell(t2, state=optuna.trial.TrialState.PRUNED)
    frozen = study.trials[2]
    assert is_surplus(frozen) and not is_finished(frozen)

    study.tell(t0, state=optuna.trial.TrialState.FAIL)  # killed: no recorded reason, so its slot is free again
    t3 = study.ask()
    assert claims_slot(t3, 2)  # ahead of it: t1 (running) only; t0 interrupted, t2 surplus
    study.tell(t1, 0.5)
    study.tell(t3, 0.6)
    assert not claims_slot(study.ask(), 2)


def test_a_surplus_trial_gives_its_grid_point_back(tmp_path):
    study = _study(tmp_path, optuna.samplers.GridSampler({"x": [0, 1, 2]}, seed=0))
    surplus = study.ask()
    surplus.suggest_categorical("x", [0, 1, 2])
    release_surplus(surplus)
    study.tell(surplus, state=optuna.trial.TrialState.PRUNED)
    study.optimize(lambda t: t.suggest_categorical("x", [0, 1, 2]), n_trials=3)
    assert sorted(t.params["x"] for t in study.trials[1:]) == [0, 1, 2]  # none repeated, none lost


def test_a_run_waits_for_trials_running_elsewhere_then_says_so(tmp_path, tiny_npz, cli, monkeypatch):
    monkeypatch.setenv("FREEZEBENCH_HEARTBEAT_GRACE", "3")  # wait 3 s + 2 heartbeats of 1 s, not a minute
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='"linear_probe"', n_trials=1)
    results = tmp_path / "results"
    code, _, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 0, err
    storage = f"sqlite:///{results / 'optuna.db'}"
    study = optuna.load_study(study_name="tiny/tinybreast/mobilenetv2_100", storage=storage)
    study.ask()  # another worker took the second slot and is training it right now

    code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results), "--n-trials", "2")
    assert code == 0, err
    states = [(t.state.name, is_surplus(t)) for t in optuna.load_study(study_name=study.study_name, storage=storage).trials]
    assert states == [("COMPLETE", False), ("RUNNING", False)]  # no surplus trial started for a slot that was taken
    text = " ".join(out.split())
    assert "waiting for trial(s) 1, running in another process" in text
    assert "stopping with 1 of 2 trials finished: trial(s) 1 still run in another process" in text
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinybreast")
    assert len(client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'trial'")) == 1
    assert "pruned" not in out and "surplus" not in out


@pytest.mark.parametrize("kind", ["tpe", "random"])
def test_every_process_continues_the_search_instead_of_replaying_it(tmp_path, kind):
    """Three processes in turn, and two at once, on one study with the suite's seed: all settings distinct."""
    import threading

    from freezebench.suite.config import Choice, Range, Suite
    from freezebench.suite.search import make_sampler
    from freezebench.suite.studies import storage

    suite = Suite("s", (), (), {"strategy": Choice(("a", "b", "c")), "lr": Range(1e-4, 1e-1, log=True)}, sampler=kind, seed=7)
    url = f"sqlite:///{tmp_path / 'o.db'}"
    optuna.create_study(study_name="s", storage=url)

    def objective(trial):
        trial.suggest_categorical("strategy", ["a", "b", "c"])
        return trial.suggest_float("lr", 1e-4, 1e-1, log=True)

    def process(n):  # a fresh sampler, as a new process (a resume, a worker) makes it
        optuna.load_study(study_name="s", storage=storage(url), sampler=make_sampler(suite)).optimize(objective, n_trials=n)

    for _ in range(3):
        process(3)
    workers = [threading.Thread(target=process, args=(4,)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert len(trials) == 17 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({(t.params["strategy"], t.params["lr"]) for t in trials}) == 17
    # and a run from scratch is reproducible: trial n always gets the same seed
    again = tmp_path / "again.db"
    optuna.create_study(study_name="s", storage=f"sqlite:///{again}")
    optuna.load_study(study_name="s", storage=f"sqlite:///{again}", sampler=make_sampler(suite)).optimize(objective, n_trials=3)
    assert [t.params for t in optuna.load_study(study_name="s", storage=f"sqlite:///{again}").trials] == [t.params for t in trials[:3]]


def test_startup_trials_is_where_tpe_stops_drawing_at_random_and_reads_back_from_the_recorded_toml(tmp_path):
    """The same seeded search with TPE's default startup (10 random trials) and with startup_trials = 3: the
    first 3 trials are the same random draws, from the 4th on TPE models the results and proposes others."""
    import tomllib
    from pathlib import Path

    from freezebench.suite.config import Choice, Range, Suite, parse_config, suite_toml
    from freezebench.suite.search import make_sampler

    def objective(trial):
        trial.suggest_categorical("strategy", ["a", "b", "c"])
        return -abs(math.log10(trial.suggest_float("lr", 1e-4, 1e-1, log=True)) + 2)

    proposed = {}
    for startup in (None, 3):
        suite = Suite("s", (), (), {"strategy": Choice(("a", "b", "c")), "lr": Range(1e-4, 1e-1, log=True)},
                      seed=5, startup_trials=startup)
        study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / f'{startup}.db'}",
                                    sampler=make_sampler(suite), direction="maximize")
        study.optimize(objective, n_trials=6)
        proposed[startup] = [t.params for t in study.trials]
    assert proposed[3][:3] == proposed[None][:3]
    assert all(a != b for a, b in zip(proposed[3][3:], proposed[None][3:]))
    config = tmp_path / "again.toml"
    text = suite_toml(Suite("s", (), (), {"strategy": "full", "lr": 0.01}, startup_trials=3)).replace("backbones = []", 'backbones = ["mobilenetv2_100"]').replace("datasets = []", 'datasets = ["breastmnist"]')
    again = parse_config(tomllib.loads(text), Path(config), {}).suites["s"]
    assert again.startup_trials == 3


def test_optuna_alone_replays_a_seeded_search(tmp_path):
    """Why the sampler above exists: a seeded Optuna sampler in a new process proposes the same settings."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    for _ in range(2):
        study = optuna.create_study(study_name="s", storage=url, sampler=optuna.samplers.RandomSampler(seed=7), load_if_exists=True)
        study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-1, log=True), n_trials=3)
    lrs = [t.params["lr"] for t in study.trials]
    assert lrs[:3] == lrs[3:]


def _race(tmp_path, claim: bool, workers: int = 4, n: int = 6) -> list[optuna.trial.FrozenTrial]:
    """``workers`` threads, each with its own connection, fill one study the way the runner does. The
    first wave is held together: all its trials run at once, and every worker checks the cap before
    any starts its next trial (the schedule that made CI's two workers run 7 trials for 6)."""
    import threading
    import time

    from freezebench.suite.studies import StopAtTrials, storage

    url = f"sqlite:///{tmp_path / f'race{claim}.db'}"
    optuna.create_study(storage=url, study_name="race")
    running, checked = threading.Barrier(workers), threading.Barrier(workers)

    def objective(trial):
        if claim and not claims_slot(trial, n):
            release_surplus(trial)
            raise optuna.TrialPruned("surplus")
        if trial.number < workers:
            running.wait(timeout=60)
        time.sleep(0.01)
        return trial.suggest_float("x", 0, 1)

    def after(study, trial):
        StopAtTrials(n)(study, trial)
        if trial.number < workers:
            checked.wait(timeout=60)

    def work():
        study = optuna.load_study(study_name="race", storage=storage(url))
        study.optimize(objective, n_trials=n, callbacks=[after])

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return optuna.load_study(study_name="race", storage=url).trials


def test_racing_workers_fill_the_study_exactly(tmp_path):
    trials = _race(tmp_path, claim=True)
    assert [t.number for t in trials if is_surplus(t)] == [6, 7]
    assert all(t.state.name == "PRUNED" and not t.params for t in trials if is_surplus(t))
    assert sum(t.state.name == "COMPLETE" and not is_surplus(t) for t in trials) == 6
    # without the claim, the same schedule overshoots: each worker checks the count only after its trial
    assert sum(t.state.name == "COMPLETE" for t in _race(tmp_path, claim=False)) == 8


def test_two_runs_at_once_on_a_fresh_results_dir(tmp_path, tiny_npz):
    """Both start on an empty folder (one creates the stores' schemas, under a lock; the other waits) and
    share the study: every trial is distinct, and both exit cleanly."""
    import subprocess
    import sys

    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='["linear_probe", "freeze_to"]', n_trials=4)
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 1"))
    results = tmp_path / "results"
    args = [sys.executable, "-m", "freezebench", "run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert not any("Traceback" in log for log in logs)
    study = optuna.load_study(study_name="tiny/tinybreast/mobilenetv2_100", storage=f"sqlite:///{results / 'optuna.db'}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and len({tuple(sorted(t.params.items())) for t in complete}) == 4
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinybreast")
    runs = client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'trial'")
    assert sorted(r.info.run_id for r in runs) == sorted(t.user_attrs["mlflow_run_id"] for t in complete)


def test_grid_points_run_once_across_processes(tmp_path):
    """The grid's order is the suite's (a point's id means one point everywhere), so processes in turn
    cover the grid, each point once."""
    from freezebench import plugins
    from freezebench.suite.config import Choice, Suite
    from freezebench.suite.search import make_sampler
    from freezebench.suite.studies import storage

    suite = Suite("s", (), (), {"strategy": Choice(("a", "b", "c")), "lr": Choice((1e-3, 1e-2, 1e-1))}, sampler="grid", seed=3)
    url = f"sqlite:///{tmp_path / 'o.db'}"
    optuna.create_study(study_name="s", storage=url)

    def objective(trial):
        trial.suggest_categorical("strategy", ["a", "b", "c"])
        return trial.suggest_categorical("lr", [1e-3, 1e-2, 1e-1])

    def process(n):
        sampler = make_sampler(suite, plugins.strategies(), {})
        optuna.load_study(study_name="s", storage=storage(url), sampler=sampler).optimize(objective, n_trials=n)

    for n in (3, 2, 4):  # three processes in turn (two at once may rarely pick one point: Optuna's grid caveat)
        process(n)
    points = [(t.params["strategy"], t.params["lr"]) for t in optuna.load_study(study_name="s", storage=url).trials]
    assert len(points) == 9 and len(set(points)) == 9


def test_of_two_trials_proposed_with_the_same_settings_at_once_the_lower_numbered_one_trains(tmp_path):
    from freezebench.suite.studies import SETTINGS_ATTR, earlier_with

    study = _study(tmp_path)
    first, second = study.ask(), study.ask()  # two workers, the same settings, both running
    for t in (first, second):
        t.set_user_attr(SETTINGS_ATTR, '{"lr": 0.01}')
    assert earlier_with(study, first.number, '{"lr": 0.01}') is None  # nothing earlier: it trains
    assert earlier_with(study, second.number, '{"lr": 0.01}').number == first.number  # steps aside
    assert earlier_with(study, second.number, '{"lr": 0.02}') is None
