"""Session fixtures: real local services, started on demand and stopped only if started here."""

from __future__ import annotations

import os
import uuid

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest

from infra import services, settings
from infra.settings import REPO_ROOT

# The suite keeps to a world of its own: its own state folder (buckets, runs, registry, flow
# history, credentials) and its own ports, whatever the user has running. A user who ran
# `make demo` finds the demo's data, runs and registered model as they were (style.md, 13).
# MB_TEST_STATE_DIR and MB_TEST_PORT_BASE move it, e.g. for two suites side by side.
TEST_PORT_OFFSETS = {"s3": 1, "master": 2, "volume": 3, "filer": 4, "mlflow": 5, "prefect": 6,
                     "mirror": 7}


def isolate_from_user_services(environ: dict) -> None:
    """Point every client and service of this process (and its children) at the test world."""
    environ["MB_STATE_DIR"] = environ.get("MB_TEST_STATE_DIR", str(REPO_ROOT / ".state-test"))
    base = int(environ.get("MB_TEST_PORT_BASE", "21000"))
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


isolate_from_user_services(os.environ)

_started: list[str] = []

# End-to-end tests: everything under tests/flows (pipelines through Prefect and DVC), the
# store outage and the demo chain's learning test. `make test` runs them; `make test-fast` (-m "not slow") leaves them out.
SLOW_PATHS = ("tests/flows/", "tests/infra/test_s3_outage.py", "tests/test_demo_learns.py")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        path = str(item.path.relative_to(config.rootpath)) if item.path else ""
        if path.startswith(SLOW_PATHS):
            item.add_marker(pytest.mark.slow)
            # A whole pipeline run (or several) per test: 40 minutes before a hang is called,
            # instead of the 15 that pyproject.toml gives a unit test.
            item.add_marker(pytest.mark.timeout(2400))


def _ensure(names: list[str]) -> None:
    by_name = {s.name: s for s in services.all_services()}
    for name in names:
        if services.read_pid(name) is None:
            services.start(by_name[name])
            _started.append(name)


def pytest_sessionfinish(session, exitstatus) -> None:
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
