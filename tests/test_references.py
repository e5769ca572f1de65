"""A plan that is linear probing or full fine-tuning, whatever strategy made it (issue "The answer"):
``freeze_to k=0`` is full fine-tuning and ``freeze_to k=n`` linear probing, so a search that never names
the references' own strategies (paper 002's every-freeze-point sweep) is still compared with them: the
confirmation set takes the best such trial, and the recommendation compares with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest

from freezebench import plugins
from freezebench.strategy import REFERENCES, FreezePlan, resolve_strategy_params
from freezebench.suite.config import Confirm
from freezebench.suite.confirmation import Candidate, members

from .conftest import write_suite

UNITS = [f"u{i}" for i in range(6)]


@pytest.mark.parametrize("name, params, expected", [
    ("linear_probe", {}, "linear_probe"),
    ("full", {}, "full"),
    ("scratch", {}, None),  # random weights: neither reference
    ("freeze_to", {"k": 0}, "full"),
    ("freeze_to", {"k": 6}, "linear_probe"),
    ("freeze_to", {"k": 3}, None),
    ("freeze_to", {"k": -1}, None),  # counted from the end: 5 of 6 frozen
    ("train_range", {"a": 0, "b": 6}, "full"),
    ("last_blocks", {"n": 6}, "full"),
    ("last_blocks", {"n": 0}, "linear_probe"),
    ("bitfit", {}, None),  # only the biases train
    ("norm_tuning", {"k": 0}, None),
    ("lp_ft", {}, None),  # starts as a linear probe, then unfreezes
    ("gradual_unfreeze", {"every": 1}, None),
    ("l2_sp", {}, None),  # full fine-tuning pulled towards the pretrained weights
    ("autofreeze", {}, None),  # a controller decides during training
])
def test_a_plan_amounts_to_a_reference_only_when_it_trains_exactly_what_the_reference_trains(name, params, expected):
    strategy = plugins.strategies().get(name)
    plan = strategy.plan(UNITS, resolve_strategy_params(strategy, "six-units", UNITS, params))
    assert plan.amounts_to == expected
    assert plan.as_dict()["amounts_to"] == expected  # recorded with the trial's plan


def test_a_head_only_selector_is_a_linear_probe_and_lr_multipliers_do_not_change_the_reference():
    assert FreezePlan(trainable=tuple(UNITS), frozen=(), param_filter="head").amounts_to == "linear_probe"
    decayed = {u: 0.5 ** i for i, u in enumerate(reversed(UNITS))}  # a suite's lr_decay
    assert FreezePlan(trainable=tuple(UNITS), frozen=(), lr_mult=decayed).amounts_to == "full"
    assert FreezePlan(trainable=tuple(UNITS), frozen=(), surgery=object()).amounts_to is None


def test_the_confirmation_set_takes_the_best_stand_in_for_a_reference_that_was_not_searched():
    trials = [Candidate("a", "freeze_to", 0.90, 0), Candidate("b", "freeze_to", 0.80, 1, "full"),
              Candidate("c", "freeze_to", 0.70, 2, "linear_probe"), Candidate("d", "freeze_to", 0.85, 3, "full")]
    got = members(trials, Confirm(top=1, references=True, seeds=2), maximize=True)
    assert [(c.run_id, why) for c, why in got] == [("a", "top 1"), ("d", "best as full"), ("c", "best as linear_probe")]
    # a stand-in already in the set (here top 1) is not added twice
    assert [(c.run_id, why) for c, why in members(trials, Confirm(top=2, references=True), maximize=True)] == \
        [("a", "top 1"), ("d", "top 2"), ("c", "best as linear_probe")]
    # the reference searched as itself is confirmed at its own best; no stand-in is added for it
    trials.append(Candidate("e", "full", 0.60, 4, "full"))
    got = members(trials, Confirm(top=1, references=True), maximize=True)
    assert [(c.run_id, why) for c, why in got] == [("a", "top 1"), ("c", "best as linear_probe"), ("e", "best of full")]
    assert [c.run_id for c, _ in members(trials, Confirm(top=1, references=False), maximize=True)] == ["a"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_npz):
    """Paper 002's shape: freeze_to only, every k among 0 (full), 4 and 8 (every unit: linear probe)."""
    tmp = tmp_path_factory.mktemp("refs")
    config = tmp / "bench.toml"
    config.write_text(f"""
[suites.sweep]
datasets = [{{ name = "medmnist_npz", path = "{tiny_npz}", alias = "tinybreast" }}]
backbones = ["mobilenetv2_100"]
sampler = "grid"
n_trials = 3
confirm = {{ top = 1, seeds = 1 }}

[suites.sweep.params]
strategy = "freeze_to"
k = [0, 4, 8]
lr = 0.003
epochs = 2
batch_size = 8
image_size = 32
""", encoding="utf-8")
    results = tmp / "results"
    proc = subprocess.run([sys.executable, "-m", "freezebench", "run", "--suite", "sweep", "--config", str(config),
                           "--results-dir", str(results)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    return results, " ".join(proc.stdout.split())


def test_a_freeze_to_sweep_is_compared_with_its_k0_and_kn_trials_as_the_references(sweep, cli):
    results, out = sweep
    code, text, _ = cli("leaderboard", "--dataset", "tinybreast", "--results-dir", str(results), "--json")
    assert code == 0
    rows = json.loads(text)
    by_k = {r["params"]["k"]: r for r in rows}
    assert {k: r["amounts_to"] for k, r in by_k.items()} == {0: "full", 4: None, 8: "linear_probe"}
    assert all(by_k[k]["confirmed"] for k in (0, 8)) and rows[0]["confirmed"]  # each reference's stand-in, the top one

    from freezebench.results.recommend import recommendations
    from freezebench.results.tracking import Tracker

    (rec,) = recommendations(Tracker(f"sqlite:///{results / 'mlflow.db'}"), "tinybreast", "f1")
    compared = set(rec.comparisons) | ({rec.best["amounts_to"]} - {None})
    assert compared == set(REFERENCES)  # each reference compared, or the recommendation is that reference
    k_of = {"full": 0, "linear_probe": 8}
    for ref, row in rec.references.items():
        assert row["strategy"] == "freeze_to" and row["params"]["k"] == k_of[ref]
        assert f"vs {ref} (as freeze_to k={k_of[ref]}, lr 0.003, 2 seeds)" in out


def test_a_reference_without_a_finished_trial_is_named_with_why(tmp_path):
    """Hyperband prunes a reference as readily as any configuration: the recommendation then says that no
    comparison was made and why, instead of leaving the reference out in silence."""
    from freezebench.results import layout
    from freezebench.results.recommend import Recommendation, _why_missing
    from freezebench.results.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))
    exp = tracker.experiment_id("data")
    parent = tracker.study_run(exp, "s/data/net", {}, {})
    for state in ("pruned", "pruned", "failed"):
        run = tracker.start_trial(exp, parent, "full", {layout.STUDY_NAME: "s/data/net", layout.STRATEGY: "full"}, {})
        tracker.end_trial(run, state, "stopped")
    assert _why_missing(tracker.client, exp, "s/data/net", "full") == (
        'none of its 3 trial(s) finished (1 failed, 2 pruned); more n_trials, or a pruner that keeps it (pruner = "none"), '
        "would give one")
    assert "linear_probe was not searched" in _why_missing(tracker.client, exp, "s/data/net", "linear_probe")
    assert _why_missing(tracker.client, exp, "other/data/net", "full").startswith("full was not searched")  # per study
    best = {"strategy": "freeze_to", "strategy_params": "k=3", "frozen": [], "lr": 0.01, "head_lr_mult": 10.0,
            "bn_policy": "eval", "val_f1": 0.8}
    from freezebench.results.stats import Interval

    rec = Recommendation("s/data/net", "data", "net", "f1", best, n_test=10, missing={"full": "none of its 3 trial(s) finished"},
                         intervals={m: Interval(0.8, 0.7, 0.9) for m in ("auc", "accuracy", "balanced_accuracy")})
    assert "  vs full: no comparison, none of its 3 trial(s) finished." in rec.lines()


def test_a_row_significantly_better_on_test_is_a_caution_under_the_recommendation():
    """The recommendation is the row chosen on validation; when the leaderboard finds a row significantly better
    on the test images, the answer warns that validation did not single out the best, naming the best such row."""
    from freezebench.results.recommend import Recommendation
    from freezebench.results.stats import Interval

    best = {"strategy": "bitfit", "strategy_params": "-", "frozen": [], "lr": 0.008, "head_lr_mult": 10.0,
            "bn_policy": "eval", "val_f1": 0.8}
    better = [{"strategy": s, "strategy_params": p, "lr": lr, "vs_first": "better", "vs_first_auc": d,
               "vs_first_auc_ci": [d - 0.04, d + 0.04], "vs_first_p": p_}
              for s, p, lr, d, p_ in [("full", "-", 1e-3, 0.04, 0.04), ("gradual_unfreeze", "every=1", 1.2e-4, 0.054, 0.03)]]
    kwargs = dict(n_test=156, intervals={m: Interval(0.8, 0.7, 0.9) for m in ("auc", "accuracy", "balanced_accuracy")})
    caution = [line for line in Recommendation("s/d/n", "d", "n", "f1", best, better=better, **kwargs).lines()
               if line.startswith("  Caution")]
    assert caution == ["  Caution: 2 configuration(s) tested significantly better on these images, e.g. gradual_unfreeze "
                       "every=1 lr 0.00012 (AUC +0.054 [+0.014, +0.094], p = 0.03, Holm): the validation images did not "
                       "single out the best; more validation data or confirm = { resplit = true } may (rows marked 'better')."]
    assert not any("Caution" in line for line in Recommendation("s/d/n", "d", "n", "f1", best, **kwargs).lines())


class _AlwaysPrune(optuna.pruners.BasePruner):
    """A real Optuna pruner that stops every trial at its first report."""

    def prune(self, study, trial) -> bool:
        return True


def test_the_first_trial_of_each_reference_is_never_pruned_and_the_others_prune_as_any(tmp_path, tiny_npz, cli, monkeypatch):
    """Measured on the `strategies` suite: Hyperband stopped every linear_probe and full trial, and the
    recommendation had nothing to be compared with. The first trial of a reference now runs to the end."""
    import freezebench.suite.runner as runner
    from freezebench.suite.studies import is_repeat

    monkeypatch.setattr(runner, "make_pruner", lambda suite: _AlwaysPrune())
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='["linear_probe", "full", "freeze_to"]', n_trials=7,
                         extra='pruner = "hyperband"\nsampler = "random"\nseed = 3\n')
    code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(tmp_path / "r"))
    assert code == 0, err
    storage = f"sqlite:///{tmp_path / 'r' / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = [t for t in optuna.load_study(study_name=summary.study_name, storage=storage).trials if not is_repeat(t)]
    by_strategy = {}
    for t in sorted(trials, key=lambda t: t.number):
        by_strategy.setdefault(t.params["strategy"], []).append(t.state.name)
    assert set(by_strategy) == {"linear_probe", "full", "freeze_to"}, by_strategy  # seed 3 proposes all three
    for ref in ("linear_probe", "full"):
        assert by_strategy[ref][0] == "COMPLETE" and set(by_strategy[ref][1:]) <= {"PRUNED"}, by_strategy
    assert set(by_strategy["freeze_to"]) == {"PRUNED"} and sum(len(v) for v in by_strategy.values()) > 3, by_strategy
    assert "vs full" in " ".join(out.split()) and "no comparison" not in out
