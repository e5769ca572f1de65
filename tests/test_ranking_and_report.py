"""Strategies ranked across datasets (Friedman, Nemenyi, critical-difference diagram) checked against
known answers, the suite recorded as TOML that reads back to the same suite, and a report over two
datasets that carries the diagram."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from freezebench.results.ranking import cd_diagram, rank_strategies

ROOT = Path(__file__).resolve().parents[1]


def test_friedman_ranks_and_p_value_equal_scipy():
    from scipy.stats import friedmanchisquare

    table = {"d1": {"a": 0.90, "b": 0.80, "c": 0.70}, "d2": {"a": 0.85, "b": 0.86, "c": 0.60},
             "d3": {"a": 0.95, "b": 0.75, "c": 0.74}, "d4": {"a": 0.88, "b": 0.70, "c": 0.71, "extra": 1.0}}
    result = rank_strategies(table)
    assert result.strategies == ["a", "b", "c"]  # "extra" is not scored everywhere: not ranked
    # ranks by hand (1 = best): d1 a1 b2 c3; d2 a2 b1 c3; d3 a1 b2 c3; d4 a1 b3 c2
    assert result.mean_ranks == pytest.approx({"a": 1.25, "b": 2.0, "c": 2.75})
    expected = friedmanchisquare([0.90, 0.85, 0.95, 0.88], [0.80, 0.86, 0.75, 0.70], [0.70, 0.60, 0.74, 0.71])
    assert result.statistic == pytest.approx(expected.statistic) and result.p_value == pytest.approx(expected.pvalue)
    p = result.pairwise_p
    assert list(p.index) == ["a", "b", "c"] and np.allclose(p.values, p.values.T) and np.allclose(np.diag(p.values), 1)
    assert p.loc["a", "c"] < p.loc["a", "b"]  # the farther apart in rank, the smaller the p-value
    figure = cd_diagram(result)
    assert figure is not None and "Friedman p" in figure.axes[0].get_title()
    assert "Friedman chi2" in result.sentence()


def test_too_few_datasets_or_strategies_give_ranks_and_the_reason():
    one = rank_strategies({"d1": {"a": 0.9, "b": 0.8, "c": 0.7}})
    assert not one.tested and one.mean_ranks == {"a": 1.0, "b": 2.0, "c": 3.0} and cd_diagram(one) is None
    assert "at least 2 studies" in one.sentence()
    assert rank_strategies({"d1": {"a": 0.9}, "d2": {"b": 0.9}}) is None  # nothing in common


def test_every_shipped_suite_is_recorded_as_toml_that_reads_back_the_same():
    from freezebench import plugins
    from freezebench.suite.config import load_config, parse_config, suite_toml

    declared = {p.name: e.name for e in plugins.strategies().entries() for p in getattr(e.obj, "params", ())}
    config = load_config(ROOT / "benchmarks.toml", declared)
    assert len(config.suites) >= 10
    for name, suite in config.suites.items():
        again = parse_config(tomllib.loads(suite_toml(suite)), Path("again.toml"), declared).suites[name]
        assert again == suite, name


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory, tiny_npz):
    tmp = tmp_path_factory.mktemp("two")
    config = tmp / "bench.toml"
    config.write_text(f"""
[suites.two]
datasets = [{{ name = "medmnist_npz", path = "{tiny_npz}", alias = "one" }},
            {{ name = "medmnist_npz", path = "{tiny_npz}", alias = "two", split_seed = 1 }}]
backbones = ["mobilenetv2_100"]
sampler = "grid"
n_trials = 3
confirm = false
[suites.two.params]
strategy = ["linear_probe", "freeze_to", "full"]
k = 5
lr = 0.003
epochs = 1
batch_size = 8
image_size = 32
""", encoding="utf-8")
    results = tmp / "results"
    proc = subprocess.run([sys.executable, "-m", "freezebench", "run", "--suite", "two", "--config", str(config),
                           "--results-dir", str(results)], capture_output=True, text=True, timeout=900, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    return tmp, results


def test_the_report_ranks_strategies_across_datasets(two_datasets, cli):
    tmp, results = two_datasets
    code, _, err = cli("report", "--suite", "two", "--results-dir", str(results), "--out", str(tmp / "out"))
    assert code == 0, err
    page = (tmp / "out" / "two.html").read_text()
    across = page[page.index("2. Across datasets"):page.index("3. Leaderboards")]
    assert "over 2 studies" in across and "Friedman chi2" in across and "<svg" in across
    assert page.count("Recommended for") == 2 and "Leaderboard: one" in page and "Leaderboard: two" in page
    assert len(page.encode()) < 2 * 600_000  # compact: under 600 kB a study


def test_a_confirmed_row_better_than_the_first_keeps_both_marks_in_the_report():
    """A confirmed row can also be significantly better (or worse) than the first: the report shows both."""
    from freezebench.results.report import row_class

    assert row_class({"confirmed": True, "vs_first": "better"}) == "confirmed better"
    assert row_class({"confirmed": False, "vs_first": "worse"}) == "worse"
    assert row_class({"confirmed": True, "vs_first": "tied"}) == "confirmed"
    assert row_class({"confirmed": False}) == ""
