"""Every service asks for credentials (real servers): S3, MLflow and Prefect refuse a request
without them and one with a wrong secret; the read-only S3 key and MLflow user can read and
cannot write; `infra.services up` refuses to listen beyond loopback without authentication."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from infra import services, settings
from infra.s3 import make_client
from infra.settings import REPO_ROOT, S3Settings


def _creds() -> dict[str, str]:
    return settings.read_env_file(settings.credentials_file())


def _status(url: str, auth: str | None, body: dict | None = None) -> int:
    """The HTTP status a request gets; auth is 'user:password' for Basic auth or None."""
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers,
                                     method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_credentials_cover_every_service_and_stay_private(s3_service):
    creds = _creds()
    assert all(creds.get(k) for k in services.CREDENTIALS)
    assert oct(settings.credentials_file().stat().st_mode & 0o777) == "0o600"
    # Clients of this process got theirs without anyone exporting them.
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == creds["MB_MLFLOW_PASSWORD"]
    assert os.environ["PREFECT_API_AUTH_STRING"] == creds["MB_PREFECT_AUTH_STRING"]


def test_mlflow_refuses_anonymous_and_wrong_password_and_reader_cannot_write(mlflow_service):
    creds = _creds()
    search = f"{mlflow_service}/api/2.0/mlflow/experiments/search"
    query = {"max_results": 1}
    user, password = creds["MB_MLFLOW_USERNAME"], creds["MB_MLFLOW_PASSWORD"]
    assert _status(search, None, query) == 401
    assert _status(search, f"{user}:{password}x", query) == 401
    assert _status(search, f"nobody:{password}", query) == 401
    assert _status(search, f"{user}:{password}", query) == 200

    reader = f"{creds['MB_MLFLOW_RO_USERNAME']}:{creds['MB_MLFLOW_RO_PASSWORD']}"
    assert _status(search, reader, query) == 200
    # An experiment and a run the pipeline made: the reader sees them and can change neither.
    # (Without MLflow workspaces any signed-in user may create experiments of its own.)
    create = f"{mlflow_service}/api/2.0/mlflow/experiments/create"
    name = f"auth-{uuid.uuid4().hex[:8]}"
    assert _status(create, f"{user}:{password}", {"name": name}) == 200
    got = urllib.request.Request(
        f"{mlflow_service}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}",
        headers={"Authorization": "Basic " + base64.b64encode(reader.encode()).decode()})
    with urllib.request.urlopen(got, timeout=60) as resp:
        experiment_id = json.loads(resp.read())["experiment"]["experiment_id"]
    api = f"{mlflow_service}/api/2.0/mlflow"
    assert _status(f"{api}/runs/create", reader, {"experiment_id": experiment_id}) == 403
    assert _status(f"{api}/experiments/delete", reader, {"experiment_id": experiment_id}) == 403
    run = urllib.request.Request(
        f"{api}/runs/create", data=json.dumps({"experiment_id": experiment_id}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Basic " +
                 base64.b64encode(f"{user}:{password}".encode()).decode()})
    with urllib.request.urlopen(run, timeout=60) as resp:
        run_id = json.loads(resp.read())["run"]["info"]["run_id"]
    metric = {"run_id": run_id, "key": "loss", "value": 1.0, "timestamp": 0, "step": 0}
    assert _status(f"{api}/runs/log-metric", reader, metric) == 403
    assert _status(f"{api}/runs/log-metric", f"{user}:{password}", metric) == 200
    # The server trusts a checked credential for a while (auth_cache_ttl_seconds): after a
    # success is cached, a wrong password and an unknown user are still refused.
    assert _status(search, f"{user}:{password}x", query) == 401
    assert _status(search, f"nobody:{password}", query) == 401


def test_mlflow_caches_checked_credentials(mlflow_service):
    # Without the cache every request pays the password hash check: 200 logged batches cost
    # the server 41.8 s of CPU instead of 2.8 s (benchmarks/mlflow_auth.py, docs/benchmarks.md).
    ini = (settings.state_dir() / "mlflow" / "basic_auth.ini").read_text()
    assert "auth_cache_ttl_seconds = 60" in ini, ini


def test_prefect_refuses_anonymous_and_wrong_auth_string(prefect_service):
    auth = _creds()["MB_PREFECT_AUTH_STRING"]
    flows = f"{prefect_service}/flows/filter"
    assert _status(flows, None, {}) == 401
    assert _status(flows, auth + "x", {}) == 401
    assert _status(flows, auth, {}) == 200
    # The health probe answers anyone (the services' own check uses it).
    assert _status(f"{prefect_service}/health", None) == 200


def test_s3_refuses_anonymous_and_wrong_key_and_reader_cannot_write(s3_service):
    endpoint = settings.s3_settings().endpoint
    anonymous = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                             config=Config(signature_version=UNSIGNED))
    with pytest.raises(ClientError):
        anonymous.get_object(Bucket="micro-budget", Key="any")
    with pytest.raises(ClientError):
        anonymous.put_object(Bucket="micro-budget", Key="test/auth/anon", Body=b"x")
    good = settings.s3_settings()
    wrong = make_client(S3Settings(endpoint, good.access_key, good.secret_key + "x"))
    with pytest.raises(ClientError):
        wrong.list_objects_v2(Bucket="micro-budget", MaxKeys=1)
    key = f"test/auth/{uuid.uuid4().hex[:8]}"
    make_client(good).put_object(Bucket="micro-budget", Key=key, Body=b"written")
    reader = make_client(settings.s3_settings(read_only=True))
    assert reader.get_object(Bucket="micro-budget", Key=key)["Body"].read() == b"written"
    with pytest.raises(ClientError) as err:
        reader.put_object(Bucket="micro-budget", Key=key + "-reader", Body=b"x")
    assert err.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError):
        reader.delete_object(Bucket="micro-budget", Key=key)
    assert make_client(good).get_object(Bucket="micro-budget", Key=key)["Body"].read() \
        == b"written"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_up_refuses_to_listen_beyond_loopback_without_auth(tmp_path, how):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MB_", "MLFLOW_", "PREFECT_"))}
    env.update(MB_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(REPO_ROOT), MB_AUTH="off")
    args = ["up", "--bind", "0.0.0.0"] if how == "flag" else ["up"]
    if how == "env":
        env["MB_BIND_ADDRESS"] = "0.0.0.0"
    run = subprocess.run([sys.executable, "-m", "infra.services", *args], env=env,
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "refusing to bind 0.0.0.0" in run.stderr and "without authentication" in run.stderr
    assert not (tmp_path / "state" / "pids").exists() or \
        not list((tmp_path / "state" / "pids").iterdir()), "a service started anyway"


def test_exposure_rules():
    saved = os.environ.get("MB_AUTH")
    try:
        os.environ["MB_AUTH"] = "off"
        services.check_exposure("127.0.0.1")
        services.check_exposure("127.0.0.2")
        with pytest.raises(services.ServiceError):
            services.check_exposure("10.1.2.3")
        os.environ.pop("MB_AUTH")
        services.check_exposure("0.0.0.0")
        services.check_exposure("10.1.2.3")
    finally:
        if saved is not None:
            os.environ["MB_AUTH"] = saved
