"""The machine refuses a write (issue "Reliability"): a full disk mid-run or while a store is made, a
read-only results dir, an unwritable decode cache, a tracking server that does not answer. Each is
named with what to do, nothing is left half-made, and the same command resumes."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import write_suite


def _suite(tmp_path, tiny_npz, n_trials=3):
    return write_suite(tmp_path / "bench.toml", tiny_npz, strategy='["linear_probe", "freeze_to"]', n_trials=n_trials)


def _trial_runs(results: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinybreast")
    return client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'trial'")


def test_a_full_disk_mid_run_closes_the_trial_and_the_rerun_retries_it(cli, tmp_path, tiny_npz, monkeypatch):
    from freezebench.results.tracking import Tracker

    config, results = _suite(tmp_path, tiny_npz), tmp_path / "results"
    real, calls = Tracker.log_outputs, []

    def disk_fills_up(self, run_id, outputs, folder=None):
        calls.append(run_id)
        if len(calls) == 2:  # the second trial's figures hit a full disk
            raise OSError(errno.ENOSPC, "No space left on device", str(results / "mlartifacts" / "x.png"))
        return real(self, run_id, outputs, folder)

    monkeypatch.setattr(Tracker, "log_outputs", disk_fills_up)
    code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 1 and "Traceback" not in err
    text = " ".join(err.split())
    assert "the disk is full (no space left on device)" in text and "run the same command again" in text
    runs = {r.info.run_id: r for r in _trial_runs(results)}
    hit = runs[calls[1]]
    assert hit.info.status == "FAILED" and hit.data.tags["freezebench.state"] == "failed"  # never RUNNING, never 'complete'
    assert "No space left on device" in hit.data.tags["freezebench.fail_reason"]
    failed_params = {k: hit.data.params[k] for k in ("strategy", "lr")}

    monkeypatch.setattr(Tracker, "log_outputs", real)  # space freed
    code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 0, err
    complete = [r for r in _trial_runs(results) if r.data.tags["freezebench.state"] == "complete"]
    settings = [(r.data.params["strategy"], r.data.params["lr"], r.data.params.get("k")) for r in complete]
    assert len(complete) == 3 and len(set(settings)) == 3  # three distinct settings, each once
    assert failed_params in [{k: r.data.params[k] for k in ("strategy", "lr")} for r in complete]  # retried
    assert all(r.info.status == "FINISHED" for r in complete)


def test_a_full_disk_between_a_trials_figures_closes_every_figure_and_the_rerun_logs_them_all(cli, tmp_path, tiny_npz, monkeypatch):
    """The disk fills up after a trial's first figures are written: the trial is closed as failed, no figure
    stays open in the process (pyplot keeps each until closed), and the rerun retries the trial in full."""
    import matplotlib.pyplot as plt
    from mlflow.tracking import MlflowClient

    config, results = _suite(tmp_path, tiny_npz, n_trials=1), tmp_path / "results"
    real, written = MlflowClient.log_figure, []

    def fills_up(self, run_id, figure, artifact_file, **kwargs):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(results / "mlartifacts" / artifact_file))
        written.append(artifact_file)
        return real(self, run_id, figure, artifact_file, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_figure", fills_up)
    code, _, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 1 and "Traceback" not in err and "the disk is full" in " ".join(err.split())
    assert len(written) == 2 and plt.get_fignums() == []  # figures drawn but not written were closed too
    (hit,) = _trial_runs(results)
    assert hit.data.tags["freezebench.state"] == "failed"

    monkeypatch.setattr(MlflowClient, "log_figure", real)
    code, _, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 0, err
    (done,) = [r for r in _trial_runs(results) if r.data.tags["freezebench.state"] == "complete"]
    logged = {a.path for a in MlflowClient(f"sqlite:///{results / 'mlflow.db'}").list_artifacts(done.info.run_id)}
    assert set(written) <= logged and {"test_roc.png", "test_confusion_matrix.png"} <= logged
    assert plt.get_fignums() == []


def test_a_full_disk_while_the_store_is_made_leaves_no_half_made_store(cli, tmp_path, tiny_npz, monkeypatch):
    from mlflow.tracking import MlflowClient

    config, results = _suite(tmp_path, tiny_npz, n_trials=1), tmp_path / "results"
    real = MlflowClient.search_experiments

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(MlflowClient, "search_experiments", full)
    code, _, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 1 and "Traceback" not in err and "Nothing was left half-made" in " ".join(err.split())
    assert not (results / "mlflow.db").exists() and not list(results.glob(".*.creating"))

    monkeypatch.setattr(MlflowClient, "search_experiments", real)
    (results / ".mlflow.db.0123456789ab.creating").write_bytes(b"SQLite format 3\x00" + b"\x00" * 50)  # as a kill mid-creation leaves it
    code, _, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
    assert code == 0, err
    assert len(_trial_runs(results)) == 1 and not list(results.glob(".*.creating"))


def test_a_results_dir_that_is_a_file_is_named(run_bad_dir, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    err = run_bad_dir(blocker / "results")
    assert f"{blocker} is a file, not a folder" in err


@pytest.fixture
def run_bad_dir(cli, tmp_path, tiny_npz):
    config = _suite(tmp_path, tiny_npz, n_trials=1)

    def run(results: Path) -> str:
        code, out, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results))
        assert code == 2 and "Traceback" not in err, err
        return " ".join(err.split())

    return run


def _unprivileged(cmd: list[str], home: Path, **kwargs):
    """Run ``cmd`` honouring file permissions: root (as in CI) writes anywhere, so it runs without the
    capability to override them (util-linux ``setpriv``); any other user runs it as it is."""
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a folder read-only to this test")
        drop = "-dac_override,-dac_read_search,-fowner"
        cmd = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", "--", *cmd]
    env = {**os.environ, "HOME": str(home), "FREEZEBENCH_CACHE": str(home / "cache"), "MPLCONFIGDIR": str(home / "mpl"),
           "COLUMNS": "200"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, **kwargs)


@pytest.mark.parametrize("where", ["results", "inside", "store_file"])
def test_a_read_only_results_dir_is_named_before_anything_is_written(tiny_npz, where):
    base = Path(tempfile.mkdtemp(prefix="fb-ro-"))
    try:
        os.chmod(base, 0o755)
        home = base / "home"
        home.mkdir()
        os.chmod(home, 0o777)
        shutil.copy(tiny_npz, base / "tiny.npz")
        config = write_suite(base / "bench.toml", base / "tiny.npz", strategy='"linear_probe"', n_trials=1)
        for f in (config, base / "tiny.npz"):
            os.chmod(f, 0o644)
        locked = base / "locked"
        locked.mkdir()
        results = locked if where == "results" else locked / "results"
        if where == "store_file":  # a writable folder, but a store file the user may not write
            import sqlite3

            results.mkdir()
            with sqlite3.connect(results / "optuna.db") as db:
                db.execute("create table t (x)")
            os.chmod(results / "optuna.db", 0o444)
            os.chmod(results, 0o777)
        os.chmod(locked, 0o555 if where != "store_file" else 0o755)
        proc = _unprivileged([sys.executable, "-m", "freezebench", "run", "--suite", "tiny", "--config", str(config),
                              "--results-dir", str(results)], home)
        text = " ".join(proc.stderr.split())
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        if where == "store_file":
            assert f"{results / 'optuna.db'} is read-only" in text and sorted(p.name for p in results.iterdir()) == ["optuna.db"]
        else:
            assert f"{locked} is not writable" in text and "--results-dir" in text
            assert list(locked.iterdir()) == []
    finally:
        os.chmod(base / "locked", 0o755)
        shutil.rmtree(base)


def test_an_unwritable_decode_cache_is_skipped_with_one_warning(tmp_path, monkeypatch):
    from PIL import Image

    from freezebench import imagefiles as imageio

    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("FREEZEBENCH_CACHE", str(blocker / "sub"))  # cannot be made: its parent is a file
    files = []
    for i in range(3):
        Image.fromarray(np.full((4, 4), i, np.uint8)).save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    with pytest.warns(UserWarning, match="Decoded images are not cached: cannot write to") as caught:
        images, kept = imageio.decode_files(files)
        again, _ = imageio.decode_files(files[:2])
    assert kept == [0, 1, 2] and [int(a[0, 0]) for a in images] == [0, 1, 2] and len(again) == 2
    assert len([w for w in caught if "not cached" in str(w.message)]) == 1  # said once, not per dataset


def test_a_damaged_cache_entry_is_decoded_again(tmp_path, monkeypatch):
    from PIL import Image

    from freezebench import imagefiles as imageio

    monkeypatch.setenv("FREEZEBENCH_CACHE", str(tmp_path / "cache"))
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / "a.png")
    imageio.decode_files([tmp_path / "a.png"])
    (entry,) = (tmp_path / "cache" / "index").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:40])  # truncated (a full disk elsewhere)
    images, kept = imageio.decode_files([tmp_path / "a.png"])
    assert kept == [0] and int(images[0][0, 0]) == 7


def test_an_unreachable_tracking_server_is_named_at_once(cli, tmp_path, tiny_npz):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    config, results = _suite(tmp_path, tiny_npz, n_trials=1), tmp_path / "results"
    start = time.monotonic()
    code, _, err = cli("run", "--suite", "tiny", "--config", str(config), "--results-dir", str(results),
                       "--tracking-uri", f"http://127.0.0.1:{port}")
    assert code == 2 and "Traceback" not in err
    assert f"Cannot reach the MLflow tracking server at http://127.0.0.1:{port}" in " ".join(err.split())
    assert time.monotonic() - start < 60 and not results.exists()


def test_faults_are_told_apart_from_bugs():
    import sqlite3

    from freezebench.errors import fault_of

    assert fault_of(OSError(errno.ENOSPC, "No space left on device", "/x/y")) == "the disk is full (no space left on device) (/x/y)"
    assert fault_of(OSError(errno.EROFS, "Read-only file system")) == "the file system is read-only"
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as inner:
            raise RuntimeError("(sqlite3.OperationalError) wrapped by SQLAlchemy") from inner
    except RuntimeError as outer:
        assert fault_of(outer) == "the disk is full (no space left on device)"
    assert fault_of(ValueError("a bug")) is None and fault_of(OSError(errno.ENOENT, "missing")) is None


def test_a_dataset_label_already_used_for_another_task_is_refused_before_anything_is_written(run_bad_dir, tmp_path):
    """Two tasks under one label (PH2 3-class, then PH2 melanoma-vs-rest, both "ph2") would share one
    experiment and one leaderboard: the second run is refused, naming the label and what differs."""
    from freezebench.results import layout
    from freezebench.results.tracking import Tracker

    results = tmp_path / "results"
    results.mkdir()
    tracker = Tracker(f"sqlite:///{results / 'mlflow.db'}", str(results / "mlartifacts"))
    exp = tracker.experiment_id("tinybreast", {layout.DATASET_PLUGIN: "medmnist_npz", layout.CLASSES: "benign,malignant,normal"})
    err = run_bad_dir(results)
    assert "Dataset 'tinybreast' of suite 'tiny' (medmnist_npz, classes 0, 1)" in err
    assert "already holds results under 'tinybreast' for another task (classes 'benign,malignant,normal')" in err
    assert 'alias = "medmnist_npz_tiny"' in err and "Nothing was written." in err
    assert tracker.client.search_runs([exp]) == []
    # an experiment from before these tags is not refused: it learns them on first use, then guards them
    about = {layout.DATASET_PLUGIN: "ph2", layout.CLASSES: "melanoma,other"}
    old = tracker.client.create_experiment("ph2")
    assert tracker.experiment_clash("ph2", about) is None and tracker.experiment_id("ph2", about) == old
    assert tracker.client.get_experiment(old).tags[layout.CLASSES] == "melanoma,other"
    assert tracker.experiment_clash("ph2", {**about, layout.CLASSES: "common,atypical,melanoma"}) == "classes 'melanoma,other'"
