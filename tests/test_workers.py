"""Scale-out and crash safety: two workers share one study on a real PostgreSQL and log to one
MLflow tracking server; a run killed with kill -9 resumes without losing or repeating trials."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from freezebench.suite.studies import is_surplus

from .conftest import write_suite

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def postgres():
    """A private PostgreSQL on 127.0.0.1, from the machine's own packages."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15 is not installed")
    pytest.importorskip("psycopg")
    base = Path(tempfile.mkdtemp(prefix="fb-pg-"))
    as_pg: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        import pwd

        pg = pwd.getpwnam("postgres")
        os.chmod(base, 0o755)
        os.chown(base, pg.pw_uid, pg.pw_gid)
        as_pg = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", _free_port()
    subprocess.run(as_pg + [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "fb"], check=True, capture_output=True)
    subprocess.run(as_pg + [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o",
                            f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    subprocess.run(as_pg + [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "fb", "optuna"], check=True)
    yield f"postgresql://fb@127.0.0.1:{port}/optuna"
    subprocess.run(as_pg + [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    _wait_http(f"http://127.0.0.1:{port}/health", proc)
    yield f"http://127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_two_workers_share_one_study(postgres, mlflow_server, tmp_path, tiny_npz):
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='["linear_probe", "freeze_to"]', n_trials=6)
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 1"))
    args = [sys.executable, "-m", "freezebench", "worker", "--suite", "tiny", "--config", str(config),
            "--storage", postgres, "--tracking-uri", mlflow_server]
    workers = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), logs
    assert all("started" in log for log in logs), "each worker ran trials"

    study = optuna.load_study(study_name="tiny/tinybreast/mobilenetv2_100", storage=postgres)
    # a worker that started a trial for the last slot a moment after the other is told so and trains nothing
    surplus = [t for t in study.trials if is_surplus(t)]
    assert all(t.state.name == "PRUNED" and "mlflow_run_id" not in t.user_attrs for t in surplus)
    trials = [t for t in study.trials if not is_surplus(t)]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    run_ids = [t.user_attrs["mlflow_run_id"] for t in trials]
    assert len(set(run_ids)) == 6  # each trial ran once, with its own MLflow run

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("tinybreast")
    parents = client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'study'")
    assert len(parents) == 1 and study.user_attrs["mlflow_parent_run_id"] == parents[0].info.run_id
    runs = client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'trial'")
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in runs)
    # artifacts went through the tracking server
    assert {"freeze_plan.json", "test_confusion_matrix.png"} <= {a.path for a in client.list_artifacts(runs[0].info.run_id)}


def test_kill_9_mid_study_resumes_without_loss_or_repeats(tmp_path, tiny_npz):
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='"full"', n_trials=3)
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 8"))
    results = tmp_path / "results"
    env = {**os.environ, "FREEZEBENCH_HEARTBEAT_GRACE": "3"}
    args = [sys.executable, "-m", "freezebench", "worker", "--suite", "tiny", "--config", str(config), "--results-dir", str(results)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:  # let one trial finish, kill -9 during the next
        if "trial 1 started" in line:  # printed once its MLflow run exists, before training
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    storage = f"sqlite:///{results / 'optuna.db'}"
    before = optuna.load_study(study_name="tiny/tinybreast/mobilenetv2_100", storage=storage).trials
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"]
    # rerun at once, inside the heartbeat grace: it runs the open slot, and once the killed trial is stale
    # (waiting for it if need be) runs that trial's settings again: the study ends complete
    resumed = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = optuna.load_study(study_name="tiny/tinybreast/mobilenetv2_100", storage=storage).trials
    assert [t.state.name for t in after] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert after[0].value == before[0].value and after[0].datetime_complete == before[0].datetime_complete
    retried = [t for t in after if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].params == before[1].params  # the killed trial's settings, once
    assert len({t.params["lr"] for t in after if t.state.name == "COMPLETE"}) == 3
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinybreast")
    runs = {r.data.tags["freezebench.optuna_trial"]: r for r in client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'trial'")}
    assert runs["1"].info.status == "KILLED" and runs["1"].data.tags["freezebench.state"] == "interrupted"
    assert [runs[n].info.status for n in ("0", "2", "3")] == ["FINISHED"] * 3


def test_sigterm_mid_trial_closes_it_as_ctrl_c_does_and_a_rerun_goes_on_at_once(tmp_path, tiny_npz):
    """A batch scheduler's preemption, `timeout` or `docker stop` sends SIGTERM: the trial running is closed
    as interrupted and queued, as with Ctrl-C, so the rerun needs no heartbeat grace to pass (set here far
    longer than the test's timeout) to run it again."""
    config = write_suite(tmp_path / "bench.toml", tiny_npz, strategy='"full"', n_trials=3)
    config.write_text(config.read_text().replace("epochs = 2", "epochs = 8"))
    results = tmp_path / "results"
    env = {**os.environ, "FREEZEBENCH_HEARTBEAT_GRACE": "3600", "COLUMNS": "200"}
    args = [sys.executable, "-m", "freezebench", "worker", "--suite", "tiny", "--config", str(config), "--results-dir", str(results)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        if "trial 1 started" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stdout.read()
    proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, rest
    assert "Stopped by SIGTERM" in rest and "Traceback" not in rest
    storage = f"sqlite:///{results / 'optuna.db'}"
    before = optuna.load_study(study_name="tiny/tinybreast/mobilenetv2_100", storage=storage).trials
    assert [t.state.name for t in before] == ["COMPLETE", "FAIL", "WAITING"]  # closed and queued, not left RUNNING
    resumed = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = optuna.load_study(study_name="tiny/tinybreast/mobilenetv2_100", storage=storage).trials
    assert [t.state.name for t in after] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert after[2].params == before[1].params  # the stopped trial's settings ran first, once
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinybreast")
    runs = {r.data.tags["freezebench.optuna_trial"]: r for r in client.search_runs([exp.experiment_id], "tags.`freezebench.role` = 'trial'")}
    assert runs["1"].info.status == "KILLED" and runs["1"].data.tags["freezebench.state"] == "interrupted"
    assert [runs[n].info.status for n in ("0", "2", "3")] == ["FINISHED"] * 3


def test_nohup_keeps_sighup_ignored(tmp_path):
    """`nohup freezebench run` ignores SIGHUP before freezebench starts: its handler for a closed terminal must
    not undo that (the run would stop when the terminal closes). Checked in a process started that way."""
    code = ("import signal, sys\n"
            "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
            "from freezebench.cli import _on_termination\n"
            "changed = _on_termination()\n"
            "sys.exit(0 if signal.SIGHUP not in changed and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN\n"
            "        and signal.SIGTERM in changed else 1)\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
    # `nohup freezebench ui`: the server it serves outlives a SIGHUP (before, it was stopped at once)
    code = ("import os, signal, sys, threading, time\n"
            "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
            "from freezebench.cli.results import serve\n"
            "threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGHUP)).start()\n"
            "start = time.time()\n"
            "status = serve([sys.executable, '-c', 'import time; time.sleep(3); raise SystemExit(7)'])\n"
            "sys.exit(0 if status == 7 and time.time() - start > 2.5 else 1)\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
