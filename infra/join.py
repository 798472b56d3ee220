"""How a node joins the services another machine runs: what to copy, what to set, what to start.

`python -m infra.join --server HOST` prints the steps for a node (run it anywhere: it prints no
secret, only where the secrets are). The node then gets a private copy of the server's credentials
file, points its clients at HOST, and starts a worker for a pool with `python -m infra.join worker
--pool gpu`: that checks the credentials against the server, then runs `prefect worker start` with
the endpoints and credentials in its environment (never on its command line), which every flow
run and torchrun rank it starts inherits.

Usage: python -m infra.join [--server HOST] [--pool gpu]
       python -m infra.join worker --pool gpu [--name NAME]
"""

from __future__ import annotations

import argparse
import base64
import os
import shlex
import socket
import sys
import urllib.error
import urllib.request

from infra import settings

BIN = os.path.dirname(sys.executable)


def instructions(server: str, pool: str) -> str:
    """The steps for a node, as shell lines; names of secrets, never their values."""
    p = settings.ports()
    creds = settings.credentials_file()
    node_creds = "~/.config/micro-budget/credentials.env"
    env = {"MB_SERVICES_HOST": server, "MB_CREDENTIALS_FILE": node_creds,
           "MB_S3_PORT": p.s3, "MB_MLFLOW_PORT": p.mlflow, "MB_PREFECT_PORT": p.prefect}
    exports = "\n".join(f"export {k}={v}" for k, v in env.items())
    return f"""\
# A node joins the micro-budget services at {server} (S3 :{p.s3}, MLflow :{p.mlflow}, Prefect :{p.prefect}).
# On the server: `python -m infra.services up --bind ADDRESS` (every service asks for credentials).
# On the node, in a checkout of this repository with `make setup` done:

# 1. The credentials: a private copy of the server's credentials file ({creds}),
#    copied over SSH, never through a command line, a log or the repository.
mkdir -p ~/.config/micro-budget && chmod 700 ~/.config/micro-budget
scp {server}:{creds} {node_creds}
chmod 600 {node_creds}

# 2. Where the services are and where the credentials are (no secret in these lines).
{exports}
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# 3. A worker for the {pool} pool: it checks the credentials against the server, then runs
#    `prefect worker start` with the endpoints and credentials in its environment.
.venv/bin/python -m infra.join worker --pool {pool} --name "$(hostname)-{pool}"
"""


def worker_env(pool: str) -> dict[str, str]:
    """The environment of a node's worker: the endpoints and the credentials this node has."""
    from infra import services

    missing = [k for k in ("MB_S3_ACCESS_KEY", "MB_S3_SECRET_KEY", "MB_MLFLOW_PASSWORD",
                           "MB_PREFECT_AUTH_STRING")
               if not settings.read_env_file(settings.credentials_file()).get(k)]
    if missing:
        raise SystemExit(f"error: {settings.credentials_file()} lacks {missing}: copy the "
                         "server's credentials file here (python -m infra.join --server HOST)")
    return {**os.environ, **services._worker(pool).env()}


def check_server(env: dict[str, str], pool: str) -> None:
    """Fail early, with the reason, when the server is out of reach or refuses the credentials."""
    url = f"{env['PREFECT_API_URL']}/work_pools/{pool}"
    token = base64.b64encode(env.get("PREFECT_API_AUTH_STRING", "").encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    try:
        urllib.request.urlopen(request, timeout=30).close()
    except urllib.error.HTTPError as err:
        reason = {401: "refused the credentials", 404: f"has no work pool {pool!r}"}
        raise SystemExit(f"error: the Prefect server at {env['PREFECT_API_URL']} "
                         f"{reason.get(err.code, f'answered {err.code}')}") from err
    except OSError as err:
        raise SystemExit(f"error: cannot reach the Prefect server at {env['PREFECT_API_URL']}: "
                         f"{err}") from err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=["print", "worker"], default="print")
    parser.add_argument("--server", default=None, help="the host the services run on")
    parser.add_argument("--pool", default="gpu", choices=["cpu", "gpu"])
    parser.add_argument("--name", default=None, help="the worker's name (default host-pool)")
    args = parser.parse_args(argv)
    if args.action == "print":
        print(instructions(args.server or socket.getfqdn(), args.pool), end="")
        return 0
    env = worker_env(args.pool)
    check_server(env, args.pool)
    name = args.name or f"{socket.gethostname()}-{args.pool}"
    command = [os.path.join(BIN, "prefect"), "worker", "start", "--pool", args.pool,
               "--type", "process", "--name", name]
    print(f"worker {name} on pool {args.pool} at {env['PREFECT_API_URL']}: "
          f"{shlex.join(command)}", flush=True)
    os.execve(command[0], command, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
