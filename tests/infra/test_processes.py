"""Stopping a service stops what it started: a Prefect worker starts each flow run in a session
of its own, and neither `down` nor a simulated machine death may leave those running. A PID file
whose process is not the one it recorded is stale: never signalled, never "already running"."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from infra import processes
from infra.services import http_ok

# A "worker" that starts a "flow run" in a new session (as Prefect's process worker does), which
# starts a child of its own, then reports both PIDs and waits. The flow run notes a SIGTERM in
# the file named by argv[1] (where a real one would close its MLflow run) and exits.
FLOW_RUN = """
import signal, subprocess, sys, time
def note(*_):
    open(sys.argv[1], "w").write("TERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, note)
c = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(c.pid, flush=True)
time.sleep(600)
"""
WORKER = """
import subprocess, sys, time
run = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]],
    start_new_session=True, stdout=subprocess.PIPE, text=True)
child = run.stdout.readline().strip()
print(run.pid, child, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def worker(tmp_path, monkeypatch):
    monkeypatch.setenv("MB_STATE_DIR", str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", WORKER, FLOW_RUN, str(tmp_path / "term")],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    run_pid, child_pid = map(int, proc.stdout.readline().split())
    processes.record_pid("fake-worker", proc.pid)
    # The flow run really is in another session, out of reach of the worker's group.
    assert os.getsid(run_pid) != os.getsid(proc.pid)
    yield proc.pid, run_pid, child_pid
    for pid in (proc.pid, run_pid, child_pid):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    proc.wait()


def _gone(pids: tuple[int, ...], timeout_s: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(map(_alive, pids)):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_stop_all_stops_the_flow_runs_a_worker_started(worker, tmp_path):
    lines = processes.stop_all(["fake-worker"], term_s=3.0, int_s=1.0)
    assert lines == [f"fake-worker: stopped (pid {worker[0]})"]
    assert _gone(worker) == []
    assert not processes.pid_file("fake-worker").exists()
    assert (tmp_path / "term").read_text() == "TERM"  # the flow run got its chance to clean up


def test_kill_all_kills_the_tree_without_a_term_first(worker, tmp_path):
    lines = processes.kill_all(["fake-worker"])
    assert lines == [f"fake-worker: stopped (pid {worker[0]})"]
    assert _gone(worker) == []
    assert not (tmp_path / "term").exists()  # killed as a dying machine would be: no warning


@pytest.fixture
def stranger(tmp_path, monkeypatch):
    """A live process that is no service of ours, started like one (its own session)."""
    monkeypatch.setenv("MB_STATE_DIR", str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                            start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def _stale_records(pid: int) -> list[str]:
    """PID files a service could have left naming `pid`: the old bare number, and a record of
    another process that had this PID (another start time and command line)."""
    other = {"pid": pid, "create_time": 1.0e9, "cmdline": ["weed", "server"]}
    same_pid_other_start = {**processes._identity(processes.psutil.Process(pid)),
                            "create_time": 1.0e9}
    return [str(pid), json.dumps(other), json.dumps(same_pid_other_start)]


def test_a_pid_file_naming_an_unrelated_process_is_stale_and_left_running(stranger):
    for text in _stale_records(stranger.pid):
        processes.pid_file("s3").write_text(text)
        assert processes.read_pid("s3") is None
        lines = processes.stop_all(["s3"], term_s=1.0, int_s=1.0)
        assert lines == [f"s3: not running (stale PID file for pid {stranger.pid} removed; "
                         "that process, if any, was left alone)"]
        assert stranger.poll() is None, "a stranger's process was signalled"
        assert not processes.pid_file("s3").exists()
    # A record of the process itself is ours.
    processes.record_pid("s3", stranger.pid)
    assert processes.read_pid("s3") == stranger.pid


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_start_over_a_stale_pid_file_starts_the_service(stranger):
    port = _free_port()
    service = processes.Service(
        "web", lambda: [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        lambda: [port], lambda: http_ok(f"http://127.0.0.1:{port}/"), 30)
    processes.pid_file("web").write_text(json.dumps(
        {"pid": stranger.pid, "create_time": 1.0e9, "cmdline": ["python", "-m", "http.server"]}))
    try:
        line = processes.start(service)
        pid = processes.read_pid("web")
        assert line == f"web: started (pid {pid})" and pid != stranger.pid
        assert processes.start(service) == f"web: already running (pid {pid})"
    finally:
        lines = processes.stop_all(["web"], term_s=5.0)
    assert lines == [f"web: stopped (pid {pid})"] and processes.read_pid("web") is None
    assert stranger.poll() is None
