"""The user's world as the user's tools see it, for the tests that prove the suite leaves it alone.

The suite moves every client to a world of its own (tests/conftest.py); this module resolves the
world it left, from the environment the suite started with: the state folder, ports, endpoints
and credentials infra/settings.py gives a user's `make demo`. A fingerprint of that world (its S3
objects, MLflow runs and registry versions) taken before the pipeline tests and after must be
equal. Every client of that world is built in a child process (`python -m tests.user_world
ACTION`) whose environment names it, with that world's credentials, so the check itself never
changes the suite's own clients or environment.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.settings import REPO_ROOT

SEAWEED = ("s3", "master", "volume", "filer")


@dataclass(frozen=True)
class World:
    """One world: the environment that names it, its state folder, ports (name -> port) and
    MLflow endpoint as infra/settings.py resolves them there."""

    environ: dict[str, str]
    state_dir: Path
    ports: dict[str, int]
    mlflow_uri: str

    def bound_ports(self, names: tuple[str, ...] | None = None) -> set[int]:
        """The ports the named services (default: all) bind; SeaweedFS also serves gRPC on
        each HTTP port + 10000."""
        names = tuple(self.ports) if names is None else names
        return {self.ports[n] for n in names} | {self.ports[n] + 10000 for n in names
                                                 if n in SEAWEED}


def child_env(environ: dict[str, str]) -> dict[str, str]:
    """`environ` for a child that resolves its world afresh: client credentials are dropped so
    that infra/settings.py exports the ones of that world's credentials file."""
    from infra.settings import CLIENT_CREDENTIALS

    return {**{k: v for k, v in environ.items() if k not in CLIENT_CREDENTIALS},
            "PYTHONPATH": str(REPO_ROOT)}


def _child(environ: dict[str, str], *args: str) -> Any:
    """`python -m tests.user_world ARGS` in the world `environ` names; its last line, as JSON."""
    done = subprocess.run([sys.executable, "-m", "tests.user_world", *args],
                          env=child_env(environ), cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"user world {args[0]}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def resolve(environ: dict[str, str]) -> World:
    """The world infra/settings.py resolves under `environ`."""
    data = _child(environ, "layout")
    return World(environ, Path(data["state_dir"]), data["ports"], data["mlflow_uri"])


def services(environ: dict[str, str], action: str) -> str:
    """`python -m infra.services ACTION --only s3,mlflow` in the world `environ` names."""
    done = subprocess.run([sys.executable, "-m", "infra.services", action, "--only", "s3,mlflow"],
                          env=child_env(environ), cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"services {action}: {done.stdout}{done.stderr}"
    return done.stdout


def answers(world: World) -> bool:
    """Whether the world's S3 (with its own keys) and MLflow both answer."""
    return _child(world.environ, "answers")


def seed(world: World) -> None:
    """What a user's `make demo` leaves: an object, a finished run with an artifact and a
    registered model version (the names the pipeline uses)."""
    _child(world.environ, "seed")


def fingerprint(world: World) -> dict[str, Any]:
    """Every S3 object (key, size, ETag), MLflow run (status, times, data) and registered
    model version (source, run, tags, aliases) of the world."""
    return _child(world.environ, "fingerprint")


# The child's side: clients built by infra/settings.py in the world the environment names.


def _answers() -> bool:
    from infra import settings
    from infra.s3 import make_client
    from infra.services import http_ok

    try:
        make_client(settings.s3_settings()).list_buckets()
    except Exception:  # noqa: BLE001 - refused, unauthorised or no keys: not this world
        return False
    return http_ok(f"{settings.mlflow_uri()}/health")


def _seed() -> bool:
    import tempfile

    from mlflow.tracking import MlflowClient

    from infra import settings
    from infra.s3 import make_client

    make_client(settings.s3_settings()).put_object(Bucket="micro-budget", Key="raw/user/seed.txt",
                                                   Body=b"the user's data")
    client = MlflowClient(tracking_uri=settings.mlflow_uri())
    experiment = (client.get_experiment_by_name("micro-budget")
                  or client.get_experiment(client.create_experiment("micro-budget")))
    run = client.create_run(experiment.experiment_id, run_name="demo-user",
                            tags={"kind": "pipeline", "profile": "demo"})
    client.log_metric(run.info.run_id, "fid", 237.9)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "report.md").write_text("the user's report\n")
        client.log_artifact(run.info.run_id, str(Path(tmp) / "report.md"), "report")
    client.set_terminated(run.info.run_id, "FINISHED")
    if not client.search_registered_models(filter_string="name = 'micro-budget'"):
        client.create_registered_model("micro-budget")
    client.create_model_version("micro-budget", "s3://micro-budget/runs/user/diffusers",
                                run_id=run.info.run_id, tags={"fid": "237.9"})
    return True


def _fingerprint() -> dict[str, Any]:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from infra import settings
    from infra.s3 import make_client

    s3 = make_client(settings.s3_settings())
    objects = {}
    for bucket in s3.list_buckets()["Buckets"]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for obj in page.get("Contents", []):
                objects[f"{bucket['Name']}/{obj['Key']}"] = [obj["Size"], obj["ETag"]]
    client = MlflowClient(tracking_uri=settings.mlflow_uri())
    experiments = client.search_experiments(view_type=ViewType.ALL)
    runs = {}
    for run in client.search_runs([e.experiment_id for e in experiments],
                                  run_view_type=ViewType.ALL, max_results=50000):
        runs[run.info.run_id] = [run.info.status, run.info.end_time, run.info.lifecycle_stage,
                                 run.data.metrics, run.data.params, run.data.tags]
    versions = {}
    for model in client.search_registered_models():
        for v in client.search_model_versions(f"name = '{model.name}'"):
            versions[f"{model.name}/{v.version}"] = [v.source, v.run_id, v.status, v.tags,
                                                     sorted(v.aliases)]
    return {"experiments": sorted([e.experiment_id, e.name, e.lifecycle_stage]
                                  for e in experiments),
            "objects": objects, "runs": runs, "versions": versions}


def _layout() -> dict[str, Any]:
    from infra import settings

    return {"state_dir": str(settings.state_dir()), "ports": dataclasses.asdict(settings.ports()),
            "mlflow_uri": settings.mlflow_uri()}


# Folders of the user's state folder that services rewrite on their own while they run, and the
# tiny models, which the suite builds where params.yaml names them (the ones `make demo` builds).
SERVICE_FOLDERS = ("models", "logs", "pids", "seaweed", "mlflow", "prefect", "mirror")


def checkout_files(state_dir: Path) -> dict[str, tuple[int, int]]:
    """Path -> (size, mtime ns) of the files a user's tools read outside the services: the CLI
    and DVC outputs in out/ and the user's state folder."""
    files = {}
    for root, skip in ((REPO_ROOT / "out", ()), (state_dir, SERVICE_FOLDERS)):
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            relative = path.relative_to(root)
            if path.is_file() and relative.parts[0] not in skip:
                stat = path.stat()
                files[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return files


@dataclass(frozen=True)
class Watch:
    """The user's world and checkout files, with their fingerprint from before the tests."""

    world: World
    users_state: Path
    seeded: bool  # a user-like world this session started and seeded, not the user's own
    before: dict[str, Any]

    def now(self) -> dict[str, Any]:
        # As JSON would carry it (tuples as lists): a fingerprint read back from a file (the
        # pytest-xdist controller hands its workers one) compares equal to a fresh one.
        return json.loads(json.dumps({**fingerprint(self.world),
                                      "files": checkout_files(self.users_state)}))

    def dumps(self) -> str:
        return json.dumps({"environ": self.world.environ, "state_dir": str(self.world.state_dir),
                           "ports": self.world.ports, "mlflow_uri": self.world.mlflow_uri,
                           "users_state": str(self.users_state), "seeded": self.seeded,
                           "before": self.before})

    @staticmethod
    def loads(text: str) -> "Watch":
        data = json.loads(text)
        world = World(data["environ"], Path(data["state_dir"]), data["ports"], data["mlflow_uri"])
        return Watch(world, Path(data["users_state"]), data["seeded"], data["before"])


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """One line per entry added, removed or changed between two fingerprints."""
    lines = []
    for part in before:
        old, new = before[part], after[part]
        if isinstance(old, list):
            old, new = dict.fromkeys(map(str, old)), dict.fromkeys(map(str, new))
        lines += [f"{part}: added {k}" for k in sorted(set(new) - set(old))]
        lines += [f"{part}: removed {k}" for k in sorted(set(old) - set(new))]
        lines += [f"{part}: changed {k}" for k in sorted(set(old) & set(new)) if old[k] != new[k]]
    return lines


if __name__ == "__main__":
    ACTIONS = {"layout": _layout, "answers": _answers, "seed": _seed,
               "fingerprint": _fingerprint}
    print(json.dumps(ACTIONS[sys.argv[1]]()))
