"""Session fixtures: real local services, started on demand and stopped only if started here."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Two pytest-xdist workers, each with services and step processes of its own, keep more torch
# threads runnable than the machine has cores. OpenMP's default lets an idle thread spin for
# the next parallel region; oversubscribed, the spinning threads take the cores from the ones
# with work: a demo-size training step of two such processes side by side took 0.49 s with the
# default and 0.17 s with PASSIVE (docs/benchmarks.md, "OpenMP wait policy"). It changes no
# arithmetic (the thread count does), so every figure a test asserts is as before. Read when
# libgomp loads, i.e. at the first torch import: set before any, and inherited by children.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from infra import services, settings
from infra.processes import port_in_use
from infra.settings import REPO_ROOT
from tests import user_world as user_world_lib
from tests.corpus import demo_corpus, quick_params  # noqa: F401 (fixtures)

# The suite keeps to a world of its own: its own state folder (buckets, runs, registry, flow
# history, credentials) and its own ports, whatever the user has running. A user who ran
# `make demo` finds the demo's data, runs and registered model as they were (style.md, 13).
# MB_TEST_STATE_DIR and MB_TEST_PORT_BASE move it, e.g. for two suites side by side.
USER_ENVIRON_KEY = "MB_TEST_USER_ENVIRON"
TEST_PORT_OFFSETS = {"s3": 1, "master": 2, "volume": 3, "filer": 4, "mlflow": 5, "prefect": 6,
                     "mirror": 7}


# Under pytest-xdist (`make test` runs -n 3) each worker gets a world of its own: the state
# folder with its name appended and the port base moved up 100 per worker (gw0 21000, gw1 21100,
# ...; SeaweedFS's gRPC ports, +10000, stay below the kernel's ephemeral range at 32768).
WORKER_PORT_STEP = 100


def worker_index(environ: dict) -> int | None:
    """This process's pytest-xdist worker number (gw2 -> 2), None outside a worker."""
    name = environ.get("PYTEST_XDIST_WORKER")
    return int(name.removeprefix("gw")) if name else None


def isolate_from_user_services(environ: dict) -> None:
    """Point every client and service of this process (and its children) at the test world."""
    state = environ.get("MB_TEST_STATE_DIR", str(REPO_ROOT / ".state-test"))
    base = int(environ.get("MB_TEST_PORT_BASE", "21000"))
    index = worker_index(environ)
    if index is not None:
        state, base = f"{state}-gw{index}", base + WORKER_PORT_STEP * index
    environ["MB_STATE_DIR"] = state
    # The base this process's world uses: tests that start services of their own beside it
    # (test_services.py, test_join.py) take ports above it.
    environ["MB_TEST_WORLD_PORT_BASE"] = str(base)
    for name, offset in TEST_PORT_OFFSETS.items():
        environ[f"MB_{name.upper()}_PORT"] = str(base + offset)
    # The Makefile exports the user's endpoints; the suite replaces them with its own.
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MB_S3_ENDPOINT", "MB_MIRROR_URL",
                 "MB_SERVICES_HOST", "MB_BIND_ADDRESS", "MB_CREDENTIALS_FILE", "MB_AUTH",
                 *settings.CLIENT_CREDENTIALS):
        environ.pop(name, None)
    environ["PREFECT_API_URL"] = settings.prefect_api_url()
    environ["MLFLOW_TRACKING_URI"] = settings.mlflow_uri()
    # Every service asks for credentials: the suite's own, generated into its state folder.
    services.ensure_credentials()
    settings.export_client_credentials(environ)


# The user's world as their tools resolve it (tests/user_world.py), kept before the suite leaves
# it. pytest-xdist workers inherit the controller's environment, already moved to the test
# world: the controller hands them the user's as JSON.
USER_ENVIRON = json.loads(os.environ.pop(USER_ENVIRON_KEY, "null")) or dict(os.environ)
os.environ[USER_ENVIRON_KEY] = json.dumps(USER_ENVIRON)
isolate_from_user_services(os.environ)
# The suite's workers look for scheduled flow runs every second instead of Prefect's 10 s: each
# step of a pipeline test is a flow run of its own, and each would otherwise wait 5 s on average.
os.environ["PREFECT_WORKER_QUERY_SECONDS"] = "1"

_started: list[str] = []

# End-to-end tests: everything under tests/flows (pipelines through Prefect and DVC), the
# store outage and the demo chain's learning test. `make test` runs them; `make test-fast` (-m "not slow") leaves them out.
SLOW_PATHS = ("tests/flows/", "tests/infra/test_s3_outage.py", "tests/test_demo_learns.py")


# Compares the user's world with its fingerprint from before the first test: runs last.
USER_WORLD_CHECK = "test_the_suite_leaves_the_users_world_as_it_was"


# The longest files (CI's --durations), longest first: pytest-xdist hands tests out in this order,
# so the long ones start at once on different workers instead of meeting at the end. Right after
# the corpus group (one worker, which builds the demo models first) come long tests that need no
# demo models (test_watch trains on random-init encoders, the store outage on S3 alone): the
# other worker works through them instead of waiting on the models' file lock (~250 s idle at
# the start of a CI rehearsal when test_pipeline came second).
LONGEST_FIRST = ("tests/flows/test_dvc.py", "tests/test_demo_learns.py",
                 "tests/flows/test_budget.py", "tests/flows/test_secrets.py",
                 "tests/flows/test_watch.py", "tests/infra/test_s3_outage.py",
                 "tests/flows/test_pipeline.py", "tests/flows/test_full_structure.py",
                 "tests/flows/test_multinode.py",
                 "tests/test_masking_ablation.py", "tests/flows/test_failures.py",
                 "tests/tasks/test_mlflow_batching.py",
                 "tests/flows/test_params_travel.py", "tests/flows/test_fanout.py")
# The files whose tests read the shared demo corpus (tests/corpus.py, built once per
# session): one worker runs them all, so the corpus is built once per run, not once per worker.
# (pytest-xdist's own `xdist_group` marks do not reach its scheduler under pytest 9: test ids
# can no longer be renamed, so the grouping is done by the scheduler below.)
CORPUS_FILES = ("tests/flows/test_dvc.py", "tests/test_demo_learns.py",
                "tests/flows/test_budget.py", "tests/flows/test_secrets.py")
CORPUS_GROUP = "demo-corpus"


def _rank(path: str) -> int:
    return next((i for i, first in enumerate(LONGEST_FIRST) if path == first),
                len(LONGEST_FIRST))


def scope_of(nodeid: str) -> str:
    """The unit pytest-xdist hands to one worker: the corpus group, else one test."""
    return CORPUS_GROUP if nodeid.split("::", 1)[0] in CORPUS_FILES else nodeid


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class CorpusOnOneWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return CorpusOnOneWorker(config, log)


def pytest_collection_modifyitems(config, items) -> None:
    paths = {}
    for item in items:
        path = str(item.path.relative_to(config.rootpath)) if item.path else ""
        paths[item.nodeid] = path
        if path.startswith(SLOW_PATHS):
            item.add_marker(pytest.mark.slow)
            # A whole pipeline run (or several) per test: 40 minutes before a hang is called,
            # instead of the 15 that pyproject.toml gives a unit test.
            item.add_marker(pytest.mark.timeout(2400))
        reads_corpus = bool({"demo_corpus", "quick_params"} & set(item.fixturenames))
        if reads_corpus and path not in CORPUS_FILES:
            raise pytest.UsageError(f"{item.nodeid} reads the demo corpus: add {path} to "
                                    "CORPUS_FILES in tests/conftest.py (one worker builds it)")
    checks = [item for item in items if item.name == USER_WORLD_CHECK]
    rest = [item for item in items if item.name != USER_WORLD_CHECK]
    items[:] = sorted(rest, key=lambda item: _rank(paths[item.nodeid])) + checks


def _ensure(names: list[str]) -> None:
    by_name = {s.name: s for s in services.all_services()}
    for name in names:
        if services.read_pid(name) is None:
            services.start(by_name[name])
            _started.append(name)


def pytest_sessionfinish(session, exitstatus) -> None:
    _compare_user_world(session)
    if _started:
        workers = [n for n in _started if n.startswith("worker-") or n == "mirror"]
        services.stop_all(workers, term_s=8.0, int_s=3.0)
        services.stop_all([n for n in _started if n not in workers])


@pytest.fixture(scope="session")
def s3_service() -> None:
    """The local SeaweedFS S3 with credentials enforced and the buckets created."""
    services.ensure_credentials()
    _ensure(["s3"])


@pytest.fixture(scope="session")
def mlflow_service(s3_service) -> str:
    """A real MLflow tracking server (sqlite) with artifacts proxied to S3; yields its URI."""
    from infra.settings import mlflow_uri

    _ensure(["mlflow"])
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_uri()
    return mlflow_uri()


@pytest.fixture(scope="session")
def prefect_service(s3_service) -> str:
    """A real Prefect server with the cpu/gpu process pools and their workers; yields the API URL."""
    from infra.settings import prefect_api_url

    _ensure(["prefect", "worker-cpu", "worker-gpu"])
    os.environ["PREFECT_API_URL"] = prefect_api_url()
    return prefect_api_url()


@pytest.fixture
def s3_prefix(s3_service) -> str:
    """A fresh, unique prefix in the pipeline bucket for one test."""
    return f"s3://micro-budget/test/{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pipeline_services(s3_service, mlflow_service, prefect_service) -> None:
    """Everything the demo pipeline needs: all services, the mirror and the tiny models."""
    from tasks.models import build_local_models
    from tasks.params import load_params

    _ensure(["mirror"])
    build_local_models(load_params(profile="demo"))


@pytest.fixture(scope="session")
def user_environ() -> dict[str, str]:
    """The environment the suite started with: the user's world as the user's tools see it."""
    return dict(USER_ENVIRON)


def _watch_user_world() -> tuple[user_world_lib.Watch, dict[str, str] | None]:
    """The user's world and its fingerprint now: the real one when it answers (read only), else
    a user-like one (S3 and MLflow on the user's ports, a state folder of its own) seeded with
    what `make demo` leaves; with the environment that started the latter (None: the user's)."""
    world = user_world_lib.resolve(USER_ENVIRON)
    environ = None
    if not user_world_lib.answers(world):
        # Inside the suite's state folder, so `pkill -f <state folder>` (and .ci/run) also ends
        # a copy that a killed session left running; one left by an earlier session stops here.
        environ = {**{k: v for k, v in USER_ENVIRON.items() if k != "MB_CREDENTIALS_FILE"},
                   "MB_STATE_DIR": str(settings.state_dir() / "user-world")}
        user_world_lib.services(environ, "down")
        shutil.rmtree(environ["MB_STATE_DIR"], ignore_errors=True)
        busy = sorted(p for p in world.bound_ports((*user_world_lib.SEAWEED, "mlflow"))
                      if port_in_use(p))
        assert not busy, (f"ports {busy} of the user's layout are held by something that is not "
                          f"the user's S3 and MLflow ({world.state_dir}): stop it and rerun")
        user_world_lib.services(environ, "up")
        world = user_world_lib.resolve(environ)
        user_world_lib.seed(world)
    watch = user_world_lib.Watch(world, user_world_lib.resolve(USER_ENVIRON).state_dir,
                                 environ is not None, {})
    return dataclasses.replace(watch, before=watch.now()), environ


# Under pytest-xdist the controller fingerprints the user's world before any worker starts and
# compares it after every worker has finished (each worker's session sees only its own tests);
# the check test in a worker compares against the controller's fingerprint, handed over in a file.
USER_WORLD_FILE_KEY = "MB_TEST_USER_WORLD"
_controller_watch: list[tuple[user_world_lib.Watch, dict[str, str] | None]] = []


def _is_xdist_controller(config) -> bool:
    return (worker_index(os.environ) is None
            and (getattr(config.option, "numprocesses", None) or 0) != 0
            and not getattr(config.option, "collectonly", False))


def pytest_sessionstart(session) -> None:
    if not _is_xdist_controller(session.config):
        return
    watch, environ = _watch_user_world()
    _controller_watch.append((watch, environ))
    path = settings.state_dir() / "user-world.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(watch.dumps())
    os.environ[USER_WORLD_FILE_KEY] = str(path)


def _compare_user_world(session) -> None:
    """The controller's comparison, after every worker has finished."""
    if not _controller_watch:
        return
    watch, environ = _controller_watch.pop()
    try:
        changed = user_world_lib.differences(watch.before, watch.now())
    finally:
        if environ is not None:
            user_world_lib.services(environ, "down")
    if changed:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.write_line("FAILED the suite changed the user's world:\n"
                            + "\n".join(changed[:40]), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def user_world() -> Iterator[user_world_lib.Watch]:
    """The user's world and its fingerprint before any test ran (in a pytest-xdist worker: the
    controller's, which also stops what it started); a user-like world started here is stopped
    at the end of the session."""
    handed = os.environ.get(USER_WORLD_FILE_KEY)
    if handed and worker_index(os.environ) is not None:
        yield user_world_lib.Watch.loads(Path(handed).read_text())
        return
    watch, environ = _watch_user_world()
    yield watch
    if environ is not None:
        user_world_lib.services(environ, "down")


@pytest.fixture(scope="session", autouse=True)
def _fingerprint_user_world_first(request) -> None:
    """When the session ends with the user-world check, fingerprint before the first test.
    A failure here is raised again, with its message, by the check that asked for it."""
    if any(item.name == USER_WORLD_CHECK for item in request.session.items):
        try:
            request.getfixturevalue("user_world")
        except (Exception, pytest.fail.Exception):  # noqa: BLE001 - reported by the check
            pass
