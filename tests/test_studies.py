"""The trial cap holds when workers race for the last slot: numbering decides, surplus trials are
marked, left out of every count and give their grid point back."""

from __future__ import annotations

import optuna
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


def test_a_worker_that_loses_the_race_runs_nothing(tmp_path, tiny_npz, cli):
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
    assert states == [("COMPLETE", False), ("RUNNING", False), ("PRUNED", True)]
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinybreast")
    assert len(client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'trial'")) == 1  # no run for the surplus
    assert "pruned" not in out and "surplus" not in out


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
