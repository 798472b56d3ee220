"""The MLflow server's CPU per authenticated request, with and without its credential cache.

Starts S3 and MLflow (basic auth on, as everywhere) in a state folder of its own on ports of its
own, once with `auth_cache_ttl_seconds` 0 and once with the default (infra/services.py), sends
the same requests a training stage sends most (log a batch of metrics to one run), and reads
the server process's CPU seconds before and after.

Usage: python -m benchmarks.mlflow_auth [--requests 200] [--port-base 19700]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import psutil

from infra.settings import REPO_ROOT

PORT_NAMES = ("S3", "MASTER", "VOLUME", "FILER", "MLFLOW", "PREFECT", "MIRROR")


def world_environ(state: str, base: int, cache_s: str) -> dict[str, str]:
    """The environment of a world of its own: state folder, ports from `base`, cache TTL."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("MB_", "MLFLOW_", "PREFECT_", "AWS_"))}
    environ.update({f"MB_{name}_PORT": str(base + 1 + i) for i, name in enumerate(PORT_NAMES)})
    environ.update(MB_STATE_DIR=state, MB_MLFLOW_AUTH_CACHE_S=cache_s,
                   PYTHONPATH=str(REPO_ROOT))
    return environ


def _services(environ: dict[str, str], action: str) -> None:
    args = [sys.executable, "-m", "infra.services", action]
    if action == "up":
        args += ["--only", "s3,mlflow"]
    subprocess.run(args, env=environ, cwd=REPO_ROOT, check=True, capture_output=True)


# Run in a child with the world's environment: the client reads its credentials from it.
_CLIENT = """
import sys, time
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from infra.settings import mlflow_uri
client = MlflowClient(tracking_uri=mlflow_uri())
run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
start = time.perf_counter()
for step in range(int(sys.argv[1])):
    client.log_batch(run.info.run_id, metrics=[Metric("loss", 1.0 / (step + 1), 0, step)])
print(time.perf_counter() - start)
"""


def measure(cache_s: str, requests: int, base: int) -> tuple[float, float]:
    """(client wall seconds, server CPU seconds) for `requests` log_batch calls."""
    with tempfile.TemporaryDirectory() as state:
        environ = world_environ(state, base, cache_s)
        _services(environ, "up")
        try:
            server = psutil.Process(json.loads(open(f"{state}/pids/mlflow.pid").read())["pid"])
            busy = lambda: sum(p.cpu_times().user + p.cpu_times().system  # noqa: E731
                               for p in [server, *server.children(recursive=True)])
            before = busy()
            done = subprocess.run([sys.executable, "-c", _CLIENT, str(requests)], env=environ,
                                  cwd=REPO_ROOT, check=True, capture_output=True, text=True)
            time.sleep(0.5)
            return float(done.stdout.split()[-1]), busy() - before
        finally:
            _services(environ, "down")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--port-base", type=int, default=19700)
    args = parser.parse_args()
    print(f"| auth_cache_ttl_seconds | {args.requests} log_batch calls, s | server CPU s |")
    print("|---|---|---|")
    for cache_s in ("0", "60"):
        wall, cpu = measure(cache_s, args.requests, args.port_base)
        print(f"| {cache_s} | {wall:.1f} | {cpu:.1f} |", flush=True)


if __name__ == "__main__":
    main()
