"""A node joins another machine's services with the credentials only: the services listen on a
second loopback address (127.0.0.2) in a state folder of their own, the "node" is an environment
of its own (its own state folder, no credentials file) that follows what `python -m infra.join
--server 127.0.0.2` prints; its worker is refused without the credentials and with a wrong one,
and with a copy of the credentials file it runs a flow from the server's gpu pool that writes to
the server's S3."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from infra import settings
from infra.settings import REPO_ROOT

HOST = "127.0.0.2"
_BASE = int(os.environ["MB_TEST_WORLD_PORT_BASE"]) + 70
PORTS = {f"MB_{name}_PORT": str(_BASE + i) for i, name in enumerate(
    ("S3", "MASTER", "VOLUME", "FILER", "MLFLOW", "PREFECT", "MIRROR"))}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MB_", "MLFLOW_", "PREFECT_", "AWS_"))}
    env.update(PORTS, PYTHONPATH=str(REPO_ROOT), PREFECT_WORKER_QUERY_SECONDS="1", **extra)
    return env


def _run(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _start_worker(env: dict, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "infra.join", "worker", "--pool", "gpu",
                             "--name", "node-gpu"], env=env, cwd=REPO_ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


# Run on the server side: deploy the health flow to the gpu pool, run it, read the marker back.
_SERVER_RUN = textwrap.dedent("""
    import sys
    from infra import s3
    from infra.settings import REPO_ROOT
    from prefect import flow
    from prefect.deployments import run_deployment
    source = flow.from_source(source=str(REPO_ROOT), entrypoint="flows/health.py:health")
    source.deploy(name="join", work_pool_name="gpu", print_next_steps=False)
    run = run_deployment("health/join", parameters={"uri": sys.argv[1], "text": sys.argv[2]},
                         timeout=240)
    assert run.state.is_completed(), run.state
    assert s3.get_bytes(sys.argv[1]).decode() == sys.argv[2]
    print("ran on", run.work_pool_name)
""")


@pytest.fixture
def server(tmp_path):
    env = _clean_env(MB_STATE_DIR=str(tmp_path / "server"))
    up = _run(env, "-m", "infra.services", "up", "--only", "s3,prefect", "--bind", HOST,
              timeout=400)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield {**env, "MB_BIND_ADDRESS": HOST,
               "PREFECT_API_URL": f"http://{HOST}:{PORTS['MB_PREFECT_PORT']}/api"}
    finally:
        _run(env, "-m", "infra.services", "down", timeout=200)


def test_a_node_joins_with_the_credentials_only(server, tmp_path):
    creds_file = tmp_path / "server" / "credentials.env"
    creds = settings.read_env_file(creds_file)
    printed = _run(server, "-m", "infra.join", "--server", HOST)
    assert printed.returncode == 0, printed.stderr
    text = printed.stdout
    assert f"export MB_SERVICES_HOST={HOST}" in text and "infra.join worker --pool gpu" in text
    assert str(creds_file) in text and "MB_CREDENTIALS_FILE" in text
    assert not [k for k, v in creds.items() if k != "MB_MLFLOW_USERNAME" and k !=
                "MB_MLFLOW_RO_USERNAME" and v in text], "the join instructions print a secret"

    # The node: the variables the instructions export, a state folder of its own.
    node_creds = tmp_path / "node" / "credentials.env"
    node = _clean_env(MB_STATE_DIR=str(tmp_path / "node"), MB_SERVICES_HOST=HOST,
                      MB_CREDENTIALS_FILE=str(node_creds))
    (tmp_path / "node").mkdir()
    refused = _run(node, "-m", "infra.join", "worker", "--pool", "gpu", timeout=120)
    assert refused.returncode != 0 and "lacks" in refused.stderr, refused.stderr
    # A stale or guessed auth string is refused by the server.
    node_creds.write_text(creds_file.read_text().replace(
        creds["MB_PREFECT_AUTH_STRING"], creds["MB_PREFECT_AUTH_STRING"] + "x"))
    refused = _run(node, "-m", "infra.join", "worker", "--pool", "gpu", timeout=120)
    assert refused.returncode != 0 and "refused the credentials" in refused.stderr, \
        refused.stderr

    shutil.copyfile(creds_file, node_creds)
    os.chmod(node_creds, 0o600)
    log_path = tmp_path / "node-worker.log"
    with open(log_path, "wb") as log:
        worker = _start_worker(node, log)
    try:
        uri = f"s3://micro-budget/test/join/{uuid.uuid4().hex[:8]}.txt"
        ran = _run(server, "-c", _SERVER_RUN, uri, "joined", timeout=400)
        assert ran.returncode == 0, ran.stdout + ran.stderr + log_path.read_text()
        assert "ran on gpu" in ran.stdout
        assert worker.poll() is None
        assert "node-gpu" in log_path.read_text()
    finally:
        _stop(worker)
    # No secret on the worker's command line or in its log.
    logged = log_path.read_text()
    assert not [k for k in ("MB_S3_SECRET_KEY", "MB_PREFECT_AUTH_STRING", "MB_MLFLOW_PASSWORD")
                if creds[k] in logged]
