"""Service lifecycle in an isolated state folder on other ports: up is idempotent, a taken port
gives a clear error, and down stops every process it started, quickly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from infra.settings import REPO_ROOT

# Ports of their own, beside the suite's (MB_TEST_PORT_BASE + 1..7, gRPC + 10000), so two
# suites side by side on other bases never meet here either.
_BASE = int(os.environ["MB_TEST_WORLD_PORT_BASE"]) + 50
ALT_PORTS = {f"MB_{name}_PORT": str(_BASE + i) for i, name in enumerate(
    ("S3", "MASTER", "VOLUME", "FILER", "MLFLOW", "PREFECT", "MIRROR"))}


@pytest.fixture
def isolated_env(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MB_", "MLFLOW_TRACKING", "PREFECT_API"))}
    env.update(ALT_PORTS, MB_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(REPO_ROOT))
    return env


def _services(env: dict, *args: str, timeout: float = 200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra.services", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _processes_mentioning(text: str) -> list[str]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmd and int(pid) != os.getpid():
            out.append(f"{pid}: {cmd[:120]}")
    return out


def test_taken_port_gives_clear_error(isolated_env):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", int(ALT_PORTS["MB_S3_PORT"])))
        sock.listen()
        run = _services(isolated_env, "up", "--only", "s3", timeout=60)
    assert run.returncode == 1
    assert f"port(s) [{ALT_PORTS['MB_S3_PORT']}] already in use" in run.stderr
    assert "MB_<NAME>_PORT" in run.stderr


def test_up_idempotent_and_down_leaves_no_process(isolated_env, tmp_path):
    state = str(tmp_path / "state")
    try:
        first = _services(isolated_env, "up", "--only", "s3,mlflow")
        assert first.returncode == 0, first.stderr + first.stdout
        assert "s3: started" in first.stdout and "mlflow: started" in first.stdout
        again = _services(isolated_env, "up", "--only", "s3,mlflow")
        assert again.returncode == 0 and again.stdout.count("already running") == 2
        status = _services(isolated_env, "status", "--only", "s3,mlflow")
        assert status.stdout.count("healthy") == 2
        assert _processes_mentioning(state), "services should be running from the state folder"
        # Credentials are generated into the state folder, private, and never printed.
        creds = (tmp_path / "state" / "credentials.env")
        assert oct(creds.stat().st_mode & 0o777) == "0o600"
        secret = [l for l in creds.read_text().splitlines() if l.startswith("MB_S3_SECRET_KEY")]
        assert secret and secret[0].split("=", 1)[1] not in first.stdout + first.stderr
    finally:
        started = time.monotonic()
        down = _services(isolated_env, "down", timeout=120)
        elapsed = time.monotonic() - started
    assert down.returncode == 0, down.stderr
    assert "still running" not in down.stdout
    assert elapsed < 45, f"services-down took {elapsed:.1f} s"
    assert _processes_mentioning(state) == []
    assert _services(isolated_env, "down").returncode == 0  # idempotent


def test_down_leaves_a_stranger_named_by_a_stale_pid_file_running(isolated_env, tmp_path):
    """The PID file of a service that died names a number the system has since given to an
    unrelated process (here one this test started, in a session of its own)."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                start_new_session=True)
    try:
        pids = tmp_path / "state" / "pids"
        pids.mkdir(parents=True)
        (pids / "s3.pid").write_text(str(stranger.pid))  # the format before identities
        (pids / "mlflow.pid").write_text(json.dumps(
            {"pid": stranger.pid, "create_time": 1.0e9, "cmdline": ["mlflow", "server"]}))
        status = _services(isolated_env, "status", "--only", "s3,mlflow", timeout=60)
        assert status.stdout.count(f"stale PID file: pid {stranger.pid} is not this service") == 2
        down = _services(isolated_env, "down", timeout=60)
        assert down.returncode == 0, down.stderr
        for name in ("s3", "mlflow"):
            assert f"{name}: not running (stale PID file for pid {stranger.pid} removed" \
                in down.stdout
        assert "stopped" not in down.stdout
        time.sleep(0.5)
        assert stranger.poll() is None, "services down signalled a process that is not ours"
        assert list(pids.iterdir()) == []
    finally:
        stranger.kill()
        stranger.wait()
