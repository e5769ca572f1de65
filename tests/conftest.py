"""Shared fixtures: a tiny real dataset, isolated plugin state, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from freezebench import plugins
from freezebench.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHIPPED_NPZ = ROOT / "plugins" / "assets" / "breastmnist.npz"


def _take(npz, split: str, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = npz[f"{split}_images"], npz[f"{split}_labels"].reshape(-1)
    idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in (0, 1)])
    return images[idx], labels[idx]


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory) -> Path:
    """48 real BreastMNIST images (balanced; 24 train, 12 val, 12 test) in MedMNIST .npz layout."""
    path = tmp_path_factory.mktemp("data") / "tinybreast.npz"
    with np.load(SHIPPED_NPZ) as npz:
        arrays = {}
        for split, per_class in (("train", 12), ("val", 6), ("test", 6)):
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = _take(npz, split, per_class)
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tiny_npz):
    from freezebench_plugins.medmnist_datasets import load_npz

    return load_npz(tiny_npz, classes=("malignant", "normal_or_benign"), name="tinybreast")


@pytest.fixture(autouse=True)
def no_figure_left_open(request):
    """Every path of a command run in-process (the ``cli`` fixture: a finished run, a failed trial, a full
    disk while logging) closes the figures it drew: pyplot keeps each one (and its memory) until it is
    closed, so a long study would pile them up. Tests that call an analysis directly hold its figures
    themselves; theirs are closed here."""
    yield
    plt = sys.modules.get("matplotlib.pyplot")
    left = plt.get_fignums() if plt is not None else []
    if left:
        titles = [plt.figure(n).axes[0].get_title() if plt.figure(n).axes else "?" for n in left]
        plt.close("all")
        if "cli" in request.fixturenames:
            pytest.fail(f"the command left {len(left)} matplotlib figure(s) open: {titles}")


@pytest.fixture
def fresh_plugins():
    """Reload plugins from entry points before and after the test (for tests that change them)."""
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str):
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        out = capsys.readouterr()
        return exc.value.code, out.out, out.err

    return run


def run_cli_subprocess(*args: str, cwd=None, env_extra: dict | None = None, timeout: int = 600):
    env = {**os.environ, "COLUMNS": "200", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "freezebench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def pip_install(package: Path, target: Path) -> dict:
    """``pip install`` a plugin package (no deps: freezebench is already here) into its own target;
    returns the environment that puts it on the path."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "--target", str(target), str(package)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return {"PYTHONPATH": str(target)}


def write_suite(path: Path, npz: Path, *, strategy='["linear_probe", "freeze_to", "full"]', n_trials=3, extra="",
                confirm="false") -> Path:
    """A tiny suite. Confirmation is off unless ``confirm`` gives its table: most tests are about the search.
    Nothing is pruned unless ``extra`` sets a pruner: the tests check what each trial records."""
    if "pruner" not in extra:
        extra = 'pruner = "none"\n' + extra
    path.write_text(
        f"""
[suites.tiny]
datasets = [{{ name = "medmnist_npz", path = "{npz}", alias = "tinybreast" }}]
backbones = ["mobilenetv2_100"]
n_trials = {n_trials}
metric = "f1"
confirm = {confirm}
{extra}
[suites.tiny.params]
strategy = {strategy}
k = {{ low = 1, high = -1 }}
lr = {{ low = 1e-3, high = 1e-2, log = true }}
epochs = 2
batch_size = 8
image_size = 32
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def finished_suite(tmp_path_factory, tiny_npz):
    """Run the tiny suite once (3 trials, 2 epochs) and return its paths."""
    tmp = tmp_path_factory.mktemp("e2e")
    config = write_suite(tmp / "bench.toml", tiny_npz)
    results = tmp / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "freezebench", "run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "160"},
    )
    assert proc.returncode == 0, proc.stderr
    return config, results, proc.stdout
