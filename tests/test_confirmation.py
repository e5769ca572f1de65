"""The confirmation set (issue "The answer"): after the search, the top configurations and the best of
each strategy are trained again with extra seeds; the leaderboard ranks confirmed configurations by their
mean, marks which rows are tied with the first, and the recommendation is its first row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from freezebench.errors import UserError
from freezebench.results import stats
from freezebench.results.evidence import add_evidence
from freezebench.results.leaderboard import versus_first
from freezebench.suite.config import OFF, Confirm, parse_config
from freezebench.suite.confirmation import Candidate, members

from .conftest import write_suite


def _c(run_id, strategy, value, number):
    return Candidate(run_id, strategy, value, number)


def test_members_are_the_top_and_the_best_of_each_strategy_once_each():
    trials = [_c("a", "freeze_to", 0.90, 0), _c("b", "freeze_to", 0.95, 1), _c("c", "full", 0.70, 2),
              _c("d", "linear_probe", 0.80, 3), _c("e", "full", 0.85, 4), _c("f", "freeze_to", 0.92, 5)]
    got = members(trials, Confirm(top=2, references=True, seeds=2), maximize=True)
    assert [(c.run_id, why) for c, why in got] == [("b", "top 1"), ("f", "top 2"), ("e", "best of full"),
                                                    ("d", "best of linear_probe")]
    assert [c.run_id for c, _ in members(trials, Confirm(top=2, references=False), maximize=True)] == ["b", "f"]
    assert [c.run_id for c, _ in members(trials, Confirm(top=1), maximize=False)] == ["c", "d", "a"]  # lower is better
    assert members(trials, OFF, maximize=True) == []


def test_members_break_ties_by_the_earlier_trial():
    trials = [_c("late", "full", 0.9, 7), _c("early", "full", 0.9, 2)]
    assert [c.run_id for c, _ in members(trials, Confirm(top=1, references=False), maximize=True)] == ["early"]


@pytest.mark.parametrize("confirm", [Confirm(top=3), Confirm(top=1), Confirm(top=2, references=False)], ids=str)
@pytest.mark.parametrize("maximize", [True, False])
def test_every_trial_the_confirmation_set_takes_kept_its_model_when_it_finished(confirm, maximize):
    """A search trial keeps its model when it could still be confirmed; so at the end every member of the set has
    its search trial's model, and its ensemble all its seeds (the PH2 224 px run delivered 2 of 3 before)."""
    from freezebench.suite.confirmation import keeps_model

    rng = np.random.default_rng(0)
    kinds = [("freeze_to", None), ("freeze_to", "full"), ("freeze_to", "linear_probe"), ("full", "full"),
             ("bitfit", None), ("linear_probe", "linear_probe")]
    for n in (1, 5, 40, 160):
        for _ in range(25):
            trials = []
            for i in range(n):
                strategy, amounts = kinds[rng.integers(len(kinds) if rng.random() < 0.5 else 3)]
                trials.append(Candidate(f"r{i}", strategy, float(rng.integers(0, 30)) / 30, i, amounts))  # ties too
            kept = {t.run_id for i, t in enumerate(trials) if keeps_model(trials[:i], t, confirm, maximize)}
            chosen = {c.run_id for c, _ in members(trials, confirm, maximize)}
            assert chosen <= kept, (chosen - kept)
            if n == 160:
                assert len(kept) < n / 2  # not every trial: only those that could still be confirmed
    worse_each_time = [Candidate(f"r{i}", "full", 1 - i / 10, i) for i in range(10)]
    assert [keeps_model(worse_each_time[:i], t, Confirm(top=2, references=False), True)
            for i, t in enumerate(worse_each_time)] == [True, True] + [False] * 8
    assert not keeps_model([], Candidate("x", "full", float("nan"), 0), Confirm(), True)  # a diverged trial
    assert not keeps_model([], worse_each_time[0], OFF, True)


def test_extra_seeds_never_repeat_the_trial_seed():
    assert Confirm(seeds=2).seeds_for(0) == (1, 2)
    assert Confirm(seeds=2).seeds_for(1) == (0, 2)
    assert Confirm(seeds=(3, 4)).seeds_for(4) == (3,)


def _suite(confirm_line: str | None) -> dict:
    text = {"datasets": ["breastmnist"], "backbones": ["mobilenetv2_100"], "params": {"strategy": "full", "lr": 0.01}}
    if confirm_line is not None:
        import tomllib

        text["confirm"] = tomllib.loads(f"confirm = {confirm_line}")["confirm"]
    return {"suites": {"s": text}}


def test_confirmation_is_on_by_default_and_configurable():
    parse = lambda line: parse_config(_suite(line), Path("bench.toml"), {}).suites["s"].confirm  # noqa: E731
    assert parse(None) == Confirm(top=3, references=True, seeds=2) and parse(None).enabled
    assert parse("false") == OFF and not OFF.enabled
    assert parse("{ top = 0, seeds = [7, 8] }") == Confirm(top=0, references=True, seeds=(7, 8))
    assert parse("{ top = 5, references = false, seeds = 1 }") == Confirm(5, False, 1)
    assert parse("{ seeds = 2, resplit = true }") == Confirm(seeds=2, resplit=True)
    assert parse('{ seeds = 4, resplit = "folds" }') == Confirm(seeds=4, resplit="folds")
    assert parse('{ seeds = "folds", resplit = "folds" }').seeds_for(0, 5) == (1, 2, 3, 4, 5)
    assert parse(None).ensemble and parse("{ ensemble = false }") == Confirm(ensemble=False)


@pytest.mark.parametrize("line, expected", [
    ("true", "suites.s.confirm: must be a table { top = 3, references = true, seeds = 2, resplit = false, ensemble = true }, or false"),
    ("{ resplit = 1 }", "suites.s.confirm.resplit: must be true (draw the training and validation images again"),
    ("{ resplit = 'fold' }", "suites.s.confirm.resplit: must be true (draw the training and validation images again for each "
                             "extra seed), false, or \"folds\" (each extra seed validates on another fold of the training images), got 'fold'"),
    ("{ ensemble = 'all' }", "suites.s.confirm.ensemble: must be true or false"),
    ("{ top = -1 }", "suites.s.confirm.top: must be an integer >= 0"),
    ("{ seeds = 'folds' }", 'suites.s.confirm.seeds: "folds" (one extra seed per validation fold) needs resplit = "folds"; got resplit = false'),
    ("{ seeds = 0 }", "suites.s.confirm.seeds: must be a count of extra seeds (>= 1) or a list of seeds"),
    ("{ seeds = [1, 1] }", "suites.s.confirm.seeds: must be a count of extra seeds or a list of distinct integers"),
    ("{ references = 'yes' }", "suites.s.confirm.references: must be true or false"),
    ("{ top = 0, references = false }", "suites.s.confirm: confirms nothing"),
    ("{ tops = 3 }", "suites.s.confirm.tops: unknown key"),
])
def test_confirmation_mistakes_are_named(line, expected):
    with pytest.raises(UserError) as err:
        parse_config(_suite(line), Path("bench.toml"), {})
    assert f"bench.toml: {expected}" in str(err.value)


class _Fixed:
    """Predictions by run id, as the leaderboard would load them."""

    def __init__(self, labels, by_run):
        self.labels, self.by_run = labels, by_run

    def row(self, row):
        stack = [self.by_run[r] for r in [row["run_id"], *row.get("seed_run_ids", [])]]
        return self.labels, np.stack(stack)


def test_identical_rows_are_tied_with_the_first_and_a_bad_one_is_not():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 80)
    good = np.where(labels == 1, 0.6 + 0.4 * rng.random(160), 0.4 * rng.random(160))
    good = np.stack([1 - good, good], 1)
    noise = rng.random(160)
    bad = np.stack([1 - noise, noise], 1)
    rows = [{"run_id": "first", "confirmed": False}, {"run_id": "same", "confirmed": False},
            {"run_id": "bad", "confirmed": False}]
    add_evidence(None, rows, _Fixed(labels, {"first": good, "same": good.copy(), "bad": bad}))
    assert [r["tied_with_first"] for r in rows] == [True, True, False]
    assert rows[1]["vs_first_auc"] == 0 and rows[1]["vs_first_p"] == 1.0
    assert rows[2]["vs_first_auc"] < 0 and rows[2]["vs_first_p"] < 0.05
    assert [r.get("vs_first") for r in rows] == [None, "tied", "worse"]


def test_a_row_significantly_better_than_the_first_on_test_says_better_not_tied():
    """The first row is chosen on validation; when a lower row is significantly better on the test images,
    the leaderboard says so (measured: a `strategies` run ranked a row +0.054 AUC, Holm p 0.03, second)."""
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 80)
    noise = rng.random(160)
    good = np.where(labels == 1, 0.6 + 0.4 * rng.random(160), 0.4 * rng.random(160))
    rows = [{"run_id": "weak", "confirmed": False, "rank": 1}, {"run_id": "strong", "confirmed": False, "rank": 2}]
    add_evidence(None, rows, _Fixed(labels, {"weak": np.stack([1 - noise, noise], 1), "strong": np.stack([1 - good, good], 1)}))
    assert rows[1]["tied_with_first"] is True  # not worse: still among "as good as the first" for --cheapest-first
    assert rows[1]["vs_first"] == "better" and rows[1]["vs_first_auc"] > 0 and rows[1]["vs_first_p"] < 0.05
    assert versus_first(rows[1]).startswith("better (AUC +") and versus_first(rows[0]) == "first"


def test_a_confirmed_row_interval_is_the_bootstrap_of_its_seed_mean():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 60)
    seeds = []
    for _ in range(3):
        s = np.clip(labels * 0.3 + 0.35 + 0.3 * rng.random(120), 0, 1)
        seeds.append(np.stack([1 - s, s], 1))
    rows = [{"run_id": "a", "seed_run_ids": ["b", "c"], "confirmed": True}]
    add_evidence(None, rows, _Fixed(labels, dict(zip("abc", seeds))))
    per_seed = [stats.point_metrics(labels, p)["auc"] for p in seeds]
    assert rows[0]["test_auc"] == pytest.approx(np.mean(per_seed))
    assert rows[0]["test_auc_ci"] == pytest.approx([stats.intervals(labels, np.stack(seeds))["auc"].low,
                                                    stats.intervals(labels, np.stack(seeds))["auc"].high])
    assert rows[0]["test_auc_ci"][0] <= rows[0]["test_auc"] <= rows[0]["test_auc_ci"][1]


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory, tiny_npz):
    """4 trials of 3 strategies, confirmed with the default membership (top 3 + best of each) and 1 extra seed."""
    tmp = tmp_path_factory.mktemp("confirm")
    config = write_suite(tmp / "bench.toml", tiny_npz, n_trials=4, confirm="{ seeds = 1 }")
    results = tmp / "results"
    argv = [sys.executable, "-m", "freezebench", "run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    return results, proc.stdout, argv


def _runs(results, role):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinybreast")
    return client, client.search_runs([exp.experiment_id], f"tags.`freezebench.role` = '{role}'")


def test_the_confirmation_set_is_trained_once_per_member_and_seed(confirmed):
    results, out, argv = confirmed
    client, trials = _runs(results, "trial")
    _, confirms = _runs(results, "confirm")
    trials = [t for t in trials if t.data.tags.get("freezebench.state") == "complete"]
    expected = members([Candidate(t.info.run_id, t.data.params["strategy"], t.data.metrics["best_val_f1"],
                                  int(t.data.tags["freezebench.optuna_trial"])) for t in trials], Confirm(seeds=1), True)
    assert sorted((r.data.tags["freezebench.confirm_of"], r.data.params["seed"]) for r in confirms) == \
        sorted((c.run_id, "1") for c, _ in expected)  # every member once, with its one extra seed, and nothing else
    for r in confirms:
        source = client.get_run(r.data.tags["freezebench.confirm_of"])
        own = ("seed", "confirm_of", "resplit")  # the same configuration, on the same split (no resplit here)
        assert r.data.params["resplit"] == "False" and r.data.params["split_hash"] == source.data.params["split_hash"]
        assert {k: v for k, v in r.data.params.items() if k not in own} == \
            {k: v for k, v in source.data.params.items() if k in r.data.params and k not in own}
    assert all(r.data.tags.get("freezebench.model") == "kept" for r in confirms)  # every seed's model (confirm.ensemble)
    assert all(client.get_run(c.run_id).data.tags.get("freezebench.model") == "kept" for c, _ in expected)  # and its trial's

    again = subprocess.run(argv, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert again.returncode == 0 and "confirmed (seed" not in again.stdout  # done: resumed, not repeated
    assert len(_runs(results, "confirm")[1]) == len(confirms)


def test_the_leaderboard_ranks_confirmed_configurations_by_their_mean(confirmed, cli):
    results, out, _ = confirmed
    code, text, _ = cli("leaderboard", "--dataset", "tinybreast", "--results-dir", str(results), "--json")
    rows = json.loads(text)
    confirmed_rows = [r for r in rows if r["confirmed"]]
    assert rows[: len(confirmed_rows)] == confirmed_rows  # confirmed first
    means = [r["val_f1"] for r in confirmed_rows]
    assert means == sorted(means, reverse=True)
    client, _ = _runs(results, "trial")
    for r in confirmed_rows:
        values = [client.get_run(i).data.metrics["best_val_f1"] for i in [r["run_id"], *r["seed_run_ids"]]]
        assert r["seeds"] == 2 and r["val_f1"] == pytest.approx(np.mean(values))
        assert r["test_auc_ci"][0] <= r["test_auc"] <= r["test_auc_ci"][1]
        own = client.get_run(r["run_id"]).data.metrics  # the search trial's single-seed values, kept beside the mean
        assert (r["val_f1_trial"], r["test_auc_trial"], r["test_auc_trial_ci"]) == \
            (own["best_val_f1"], own["test_auc"], [own["test_auc_ci_low"], own["test_auc_ci_high"]])
    assert rows[0]["tied_with_first"] is True
    assert all(r["tied_with_first"] in (True, False) and 0 <= r["vs_first_p"] <= 1 for r in rows[1:])

    from freezebench.results.recommend import recommendations
    from freezebench.results.tracking import Tracker

    (rec,) = recommendations(Tracker(f"sqlite:///{results / 'mlflow.db'}"), "tinybreast", "f1")
    assert rec.best["run_id"] == rows[0]["run_id"] and rec.model_run_id in [rows[0]["run_id"], *rows[0]["seed_run_ids"]]
    assert "over 2 seeds" in " ".join(out.split()) and "mean of 2 seeds" in " ".join(out.split())


def test_resplit_confirmation_scores_each_seed_on_other_validation_images_and_the_same_test_images(tmp_path, tiny_npz, cli):
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='["linear_probe"]', n_trials=2,
                         confirm="{ top = 1, references = false, seeds = 2, resplit = true }")
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "freezebench", "run", "--suite", "tiny", "--config", str(config),
                           "--results-dir", str(results)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    from freezebench.results import layout
    from freezebench.results.tracking import load_arrays

    client, confirms = _runs(results, "confirm")
    (source_id,) = {r.data.tags["freezebench.confirm_of"] for r in confirms}
    source = client.get_run(source_id)
    hashes = [r.data.params["split_hash"] for r in confirms]
    assert len(confirms) == 2 and len(set(hashes)) == 2 and source.data.params["split_hash"] not in hashes
    assert all(r.data.params["resplit"] == "True" for r in confirms)
    tested = [load_arrays(client, r.info.run_id, layout.TEST_PREDICTIONS)["labels"] for r in [source, *confirms]]
    assert all(np.array_equal(tested[0], t) for t in tested[1:])  # the same test images, in the same order
    code, text, _ = cli("leaderboard", "--dataset", "tinybreast", "--results-dir", str(results), "--json")
    first = json.loads(text)[0]
    assert first["run_id"] == source_id and first["seeds"] == 3 and first["test_auc_ci"][0] <= first["test_auc"]


def test_folds_confirmation_validates_each_seed_on_another_fold_of_the_training_images(tmp_path, tiny_npz, cli):
    """resplit = "folds" with one seed per fold (the tiny split: 24 training images, 12 validation: 2 folds):
    the configuration's three runs validate on three disjoint sets, together every train+val image once."""
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='["linear_probe"]', n_trials=2,
                         confirm='{ top = 1, references = false, seeds = "folds", resplit = "folds" }')
    results = tmp_path / "results"
    code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 0, err
    client, confirms = _runs(results, "confirm")
    (source_id,) = {r.data.tags["freezebench.confirm_of"] for r in confirms}
    source = client.get_run(source_id)
    assert sorted(r.data.params["validation_fold"] for r in confirms) == ["0", "1"]
    assert all(r.data.params["resplit"] == "folds" for r in confirms)
    hashes = {r.data.params["split_hash"] for r in confirms} | {source.data.params["split_hash"]}
    assert len(hashes) == 3
    code, text, _ = cli("leaderboard", "--dataset", "tinybreast", "--results-dir", str(results), "--json")
    first = json.loads(text)[0]
    assert first["run_id"] == source_id and first["seeds"] == 3


def test_folds_that_the_training_subjects_cannot_make_are_refused_before_anything_is_recorded(tmp_path, tiny_npz, cli):
    few = tmp_path / "few.npz"  # every training image a copy of a validation image: no fold can be cut apart from them
    with np.load(tiny_npz) as npz:
        arrays = dict(npz)
    arrays["train_images"], arrays["train_labels"] = arrays["val_images"].copy(), arrays["val_labels"].copy()
    np.savez(few, **arrays)
    config = write_suite(tmp_path / "bench.toml", few, confirm='{ top = 1, resplit = "folds" }')
    code, _, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(tmp_path / "results"))
    assert code == 2 and "suites.tiny.datasets[0]" in err and "too few training subjects" in " ".join(err.split())
    assert not (tmp_path / "results" / "mlflow.db").exists()
