"""Every suite in the shipped benchmarks.toml is valid: names, options, windows, unit ranges."""

from __future__ import annotations

import pytest

from freezebench import plugins
from freezebench.suite.config import load_config
from freezebench.suite.preparation import prepare_suite
from freezebench.suite.search import grid_size

from .conftest import ROOT


def _config():
    declared = {p.name: e.name for e in plugins.strategies().entries() for p in e.obj.params}
    return load_config(ROOT / "benchmarks.toml", declared)


@pytest.mark.parametrize("suite", list(_config().suites))
def test_shipped_suite_prepares(suite):
    config = _config()
    if config.suite(suite).data_root and not (ROOT.parent / "shared" / "data").is_dir():
        pytest.skip("../shared/data not present")
    plans = prepare_suite(config, suite, allow_leaks=suite.endswith("_leaky")).studies
    assert plans
    for plan in plans:
        n_units = {g: len(u) for g, u in plan.units.items()}
        size = grid_size(plan.suite, plugins.strategies(), n_units)
        if plan.suite.sampler == "grid":
            assert size and size <= plan.suite.n_trials


def test_paper_grids_have_the_papers_sizes():
    config = _config()
    sweep = prepare_suite(config, "paper002_sweep").studies[0]
    assert grid_size(sweep.suite, plugins.strategies(), {"layer": 52}) == 53 * 3
    cases = prepare_suite(config, "paper004_cases").studies[0]
    assert grid_size(cases.suite, plugins.strategies(), {"block": 7}) == 9


def test_paper002_at_224_px_differs_from_128_px_only_in_size_and_leaderboard():
    """The two PH2 sweeps are one experiment at two image sizes, each on its own leaderboard."""
    import dataclasses

    config = _config()
    small, large = config.suite("paper002_ph2"), config.suite("paper002_ph2_224")
    assert (small.params["image_size"], large.params["image_size"]) == (128, 224)
    assert {k: v for k, v in small.params.items() if k != "image_size"} == \
           {k: v for k, v in large.params.items() if k != "image_size"}
    assert small.datasets[0].alias != large.datasets[0].alias
    assert dataclasses.replace(small.datasets[0], alias=None) == dataclasses.replace(large.datasets[0], alias=None)
    same = ("backbones", "n_trials", "metric", "sampler", "pruner", "seed", "data_root", "prune_on", "confirm", "analyses")
    assert [getattr(small, k) for k in same] == [getattr(large, k) for k in same]


def test_leaky_suite_needs_allow_leaks():
    from freezebench.errors import UserError

    if not (ROOT.parent / "shared" / "data").is_dir():
        pytest.skip("../shared/data not present")
    with pytest.raises(UserError, match="leak audit of 'brain_tumor_mri'.*before splitting"):
        prepare_suite(_config(), "paper003_leaky")


def test_searches_prune_with_hyperband_and_grids_train_every_point(tmp_path):
    """The default pruner follows the sampler (a grid is a table of every point); a suite's own choice wins."""
    from freezebench.suite.config import default_pruner

    body = '\ndatasets = ["breastmnist"]\nbackbones = ["mobilenetv2_100"]\n{extra}\n[suites.{name}.params]\nstrategy = "full"\nlr = [1e-3]\n'
    suites = {"searched": "", "random": 'sampler = "random"', "grid": 'sampler = "grid"',
              "grid_pruned": 'sampler = "grid"\npruner = "median"', "unpruned": 'pruner = "none"'}
    path = tmp_path / "b.toml"
    path.write_text("".join(f"[suites.{n}]" + body.format(extra=e, name=n) for n, e in suites.items()))
    config = load_config(path)
    assert {n: s.pruner for n, s in config.suites.items()} == {
        "searched": "hyperband", "random": "hyperband", "grid": "none", "grid_pruned": "median", "unpruned": "none"}
    shipped = _config()
    for suite in shipped.suites.values():  # every shipped grid (the papers' tables) trains every point
        if suite.sampler == "grid":
            assert suite.pruner == "none", suite.name
    assert shipped.suite("quick").pruner == default_pruner("tpe") == "hyperband"


def test_the_quick_suite_searches_the_references_and_the_freeze_points_between_them():
    """The README's first command tests its answer against linear probing and full fine-tuning, so it must
    search both; scratch, never its answer, is left to the suites that reproduce paper 000."""
    from freezebench.strategy import REFERENCES

    config = _config()
    searched = config.suite("quick").params["strategy"].values
    assert set(REFERENCES) <= set(searched) and "freeze_to" in searched
    assert "scratch" not in searched
    assert any("scratch" in getattr(config.suite(name).params.get("strategy"), "values", ()) for name in config.suites
               if name.startswith("paper000"))
