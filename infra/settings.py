"""Where the local services live and how clients reach them.

Values come from the environment first (so a cluster deployment points at real endpoints with
MB_S3_ENDPOINT, MLFLOW_TRACKING_URI, PREFECT_API_URL), then from the git-ignored state folder
written by `make setup` (generated credentials), then from loopback defaults.
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
    endpoint = _get("MB_S3_ENDPOINT", f"http://127.0.0.1:{ports().s3}")
    return S3Settings(endpoint=endpoint, access_key=access, secret_key=secret)


def mlflow_uri() -> str:
    return _get("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{ports().mlflow}")


def prefect_api_url() -> str:
    return _get("PREFECT_API_URL", f"http://127.0.0.1:{ports().prefect}/api")


def mirror_url() -> str:
    """Base URL of the local dataset mirror (demo profile sources point here)."""
    return _get("MB_MIRROR_URL", f"http://127.0.0.1:{ports().mirror}")
