"""Point DVC's default remote at the pipeline bucket on the configured S3 endpoint.

Everything goes to .dvc/config.local (git-ignored): the endpoint is machine-specific and the keys
are secrets. Usage: python -m infra.dvc_remote
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from infra.settings import REPO_ROOT, s3_settings

REMOTE = "local-s3"
URL = "s3://micro-budget/dvc"


def configure(repo: Path = REPO_ROOT) -> None:
    s3 = s3_settings()
    dvc = str(Path(sys.executable).parent / "dvc")
    commands = [
        ["remote", "add", "--local", "--force", "--default", REMOTE, URL],
        ["remote", "modify", "--local", REMOTE, "endpointurl", s3.endpoint],
        ["remote", "modify", "--local", REMOTE, "access_key_id", s3.access_key],
        ["remote", "modify", "--local", REMOTE, "secret_access_key", s3.secret_key],
    ]
    for args in commands:
        subprocess.run([dvc, *args], cwd=repo, check=True, capture_output=True, text=True)


if __name__ == "__main__":
    configure()
    print(f"dvc remote {REMOTE} -> {URL} at {s3_settings().endpoint} (in .dvc/config.local)")
