"""`freezebench ui` serves the local store: the trial runs are there over HTTP and in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import ROOT

ARTIFACTS = Path(os.environ.get("FREEZEBENCH_TEST_ARTIFACTS", ROOT / "test-artifacts"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: dict | None = None):
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.read().decode()


@pytest.fixture(scope="module")
def ui_server(finished_suite):
    _, results, _ = finished_suite
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "freezebench", "ui", "--port", str(port), "--results-dir", str(results)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    printed = [proc.stdout.readline(), proc.stdout.readline()]
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"freezebench ui exited early: {proc.stdout.read()}")
        try:
            if _get(f"{base}/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("MLflow UI did not start within 90 s")
    yield base, printed
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)




def test_ui_prints_url_and_serves_the_trial_runs(ui_server):
    base, printed = ui_server
    assert printed[0].startswith("MLflow UI for ") and f"{base}/#/experiments" in printed[0]
    assert printed[1].strip().startswith(f"tinybreast leaderboard: {base}/#/experiments/")
    status, body = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=tinybreast")
    exp_id = json.loads(body)["experiment"]["experiment_id"]
    status, body = _get(f"{base}/api/2.0/mlflow/runs/search",
                        {"experiment_ids": [exp_id], "filter": "tags.`freezebench.role` = 'trial'", "max_results": 100})
    runs = json.loads(body)["runs"]
    assert status == 200 and len(runs) >= 3
    status, page = _get(f"{base}/")
    assert status == 200 and "<html" in page.lower()


def test_ui_binds_only_to_loopback(ui_server):
    base, _ = ui_server
    port = int(base.rsplit(":", 1)[1])
    addresses = [a for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET) if a[4][0] != "127.0.0.1"]
    for addr in addresses[:1]:
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect((addr[4][0], port))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_runs_page_in_headless_chromium(ui_server, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("FREEZEBENCH_REQUIRE_BROWSER"):
            pytest.fail("chromium is required (FREEZEBENCH_REQUIRE_BROWSER is set) but not installed")
        pytest.skip("chromium is not installed (.ci/run installs it)")
    base, printed = ui_server
    url = printed[1].split("leaderboard: ", 1)[1].strip()  # the URL `freezebench ui` printed
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--window-size=1400,900"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "mlflow-runs-page.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
    # every trial run is rendered by the MLflow UI, in leaderboard order
    _, body = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=tinybreast")
    exp_id = json.loads(body)["experiment"]["experiment_id"]
    _, body = _get(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id], "filter": "tags.`freezebench.role` = 'trial'",
                                                          "order_by": ["metrics.`best_val_f1` DESC"]})
    names = [r["info"]["run_name"] for r in json.loads(body)["runs"]]
    assert len(names) >= 3
    positions = [dom.find(name) for name in names]
    assert all(p >= 0 for p in positions), (names, "not in the rendered page")
    text = re.sub(r"<[^>]+>", "", dom)  # the page's text, e.g. "<strong>3</strong> matching runs"
    assert f"{len(names)} matching runs" in text


def _processes() -> list[tuple[int, int, int, str]]:
    """(pid, parent pid, process group, state) of every process, from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        out.append((int(stat.parent.name), int(ppid), int(pgrp), state))
    return out


def _group_members(pgid: int) -> list[int]:
    return [pid for pid, _, group, state in _processes() if group == pgid and state != "Z"]


def _children(pid: int) -> list[int]:
    return [child for child, parent, _, _ in _processes() if parent == pid]


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
def test_stopping_the_ui_stops_everything_it_started(finished_suite, signal_name):
    import signal

    _, results, _ = finished_suite
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "freezebench", "ui", "--port", str(port), "--results-dir", str(results)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if _get(f"http://127.0.0.1:{port}/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.5)
    server = _children(proc.pid)
    assert len(server) == 1
    group = _group_members(server[0])  # the MLflow server, its uvicorn worker, its job consumers
    assert len(group) >= 2
    proc.send_signal(getattr(signal, signal_name))  # to freezebench only, as a supervisor or a closed terminal does
    assert proc.wait(timeout=60) == 0
    deadline = time.time() + 20
    while _group_members(server[0]) and time.time() < deadline:
        time.sleep(0.5)
    assert _group_members(server[0]) == []
    with socket.socket() as s:  # the port is free again: a server can listen on it (TIME_WAIT aside, as servers bind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_a_taken_port_is_named(finished_suite):
    _, results, _ = finished_suite
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "freezebench", "ui", "--port", str(port), "--results-dir", str(results)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"Port {port} on 127.0.0.1 is in use" in " ".join(result.stderr.split()) and "--port 0" in result.stderr
    assert "leaderboard:" not in result.stdout  # no URLs that would point at the other server
