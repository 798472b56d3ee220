"""Service lifecycle in an isolated state folder on other ports: up is idempotent, a taken port
gives a clear error, and down stops every process it started, quickly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from infra.settings import REPO_ROOT

ALT_PORTS = {"MB_S3_PORT": "31333", "MB_MASTER_PORT": "32333", "MB_VOLUME_PORT": "31380",
             "MB_FILER_PORT": "31888", "MB_MLFLOW_PORT": "35500", "MB_PREFECT_PORT": "34200",
             "MB_MIRROR_PORT": "38600"}


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
    assert "port(s) [31333] already in use" in run.stderr and "MB_<NAME>_PORT" in run.stderr


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
