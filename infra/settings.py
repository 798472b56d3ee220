"""Where the local services live and how clients reach them.

Values come from the environment first (so a cluster deployment points at real endpoints with
MB_S3_ENDPOINT, MLFLOW_TRACKING_URI, PREFECT_API_URL, or at another machine's services with
MB_SERVICES_HOST), then from the git-ignored credentials file written by `make setup`, then from
loopback defaults.

Every service asks for credentials. Importing this module puts the MLflow and Prefect client
credentials from the credentials file into os.environ (where the MLflow and Prefect clients read
them), unless they are set already; every child process inherits them through its environment,
never through its command line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    """Git-ignored folder for service data, logs, PID files and generated credentials."""
    return Path(os.environ.get("MB_STATE_DIR", REPO_ROOT / ".state")).resolve()


def credentials_file() -> Path:
    """The generated keys and passwords (mode 600); MB_CREDENTIALS_FILE names a copy elsewhere,
    e.g. on a node that joins another machine's services (infra/join.py)."""
    if os.environ.get("MB_CREDENTIALS_FILE"):
        return Path(os.environ["MB_CREDENTIALS_FILE"]).resolve()
    return state_dir() / "credentials.env"


def read_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines; missing file gives {}."""
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _get(name: str, default: str = "") -> str:
    if name in os.environ:
        return os.environ[name]
    return read_env_file(credentials_file()).get(name, default)


# Client variable (read by the MLflow or Prefect client) -> its entry in the credentials file.
CLIENT_CREDENTIALS = {
    "MLFLOW_TRACKING_USERNAME": "MB_MLFLOW_USERNAME",
    "MLFLOW_TRACKING_PASSWORD": "MB_MLFLOW_PASSWORD",
    "PREFECT_API_AUTH_STRING": "MB_PREFECT_AUTH_STRING",
}


def client_credentials() -> dict[str, str]:
    """The MLflow and Prefect client variables as the credentials file gives them."""
    stored = read_env_file(credentials_file())
    return {var: stored[key] for var, key in CLIENT_CREDENTIALS.items() if stored.get(key)}


def export_client_credentials(environ: "os._Environ[str] | dict[str, str]" = os.environ) -> None:
    """Set the client credentials in `environ` where they are not set already. Prefect reads its
    settings once, at import: when it is imported already, its settings are read again."""
    added = {k: v for k, v in client_credentials().items() if not environ.get(k)}
    environ.update(added)
    if "PREFECT_API_AUTH_STRING" in added and environ is os.environ:
        import sys

        if "prefect.context" in sys.modules:
            sys.modules["prefect.context"].refresh_global_settings_context()


def bind_address() -> str:
    """Where `infra.services up` listens: loopback unless MB_BIND_ADDRESS (or --bind) says
    otherwise; a non-loopback address is refused while any service runs without authentication."""
    return _get("MB_BIND_ADDRESS", "127.0.0.1")


def services_host() -> str:
    """The host clients reach the services at: MB_SERVICES_HOST on a node that joins another
    machine, else the bind address (loopback when it binds every interface)."""
    bind = bind_address()
    return _get("MB_SERVICES_HOST", "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind)


@dataclass(frozen=True)
class Ports:
    """Loopback ports of the embedded services; each can be moved with its MB_*_PORT variable."""

    s3: int
    master: int
    volume: int
    filer: int
    mlflow: int
    prefect: int
    mirror: int


def ports() -> Ports:
    def port(name: str, default: int) -> int:
        raw = _get(f"MB_{name.upper()}_PORT", str(default))
        try:
            value = int(raw)
        except ValueError as err:
            raise ValueError(f"MB_{name.upper()}_PORT must be an integer, got {raw!r}") from err
        if not 1024 <= value <= 55535:
            # SeaweedFS serves gRPC on port + 10000, so keep room above.
            raise ValueError(f"MB_{name.upper()}_PORT={value} must be in 1024..55535")
        return value

    return Ports(
        s3=port("s3", 18333),
        master=port("master", 19333),
        volume=port("volume", 18380),
        filer=port("filer", 18888),
        mlflow=port("mlflow", 15500),
        prefect=port("prefect", 14200),
        mirror=port("mirror", 18600),
    )


@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


def s3_settings(read_only: bool = False) -> S3Settings:
    """S3 endpoint and keys; read_only picks the identity that may only read and list."""
    prefix = "MB_S3_RO" if read_only else "MB_S3"
    access, secret = _get(f"{prefix}_ACCESS_KEY"), _get(f"{prefix}_SECRET_KEY")
    if not access or not secret:
        raise RuntimeError(
            f"{prefix}_ACCESS_KEY/{prefix}_SECRET_KEY are not set and {credentials_file()} "
            "has none: run `make setup` (generates local keys) or export them."
        )
    endpoint = _get("MB_S3_ENDPOINT", f"http://{services_host()}:{ports().s3}")
    return S3Settings(endpoint=endpoint, access_key=access, secret_key=secret)


def mlflow_uri() -> str:
    return _get("MLFLOW_TRACKING_URI", f"http://{services_host()}:{ports().mlflow}")


def prefect_api_url() -> str:
    return _get("PREFECT_API_URL", f"http://{services_host()}:{ports().prefect}/api")


def mirror_url() -> str:
    """Base URL of the local dataset mirror (demo profile sources point here)."""
    return _get("MB_MIRROR_URL", f"http://127.0.0.1:{ports().mirror}")


export_client_credentials()
