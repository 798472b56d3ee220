"""`dvc repro` runs the demo pipeline end to end in a fresh copy of the repository; a second
repro has nothing to do; `dvc push` / `dvc pull` round-trip the outputs through the local S3."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from infra.dvc_remote import configure
from infra.settings import REPO_ROOT

BIN = Path(sys.executable).parent
OUTS = ("download.json", "caption.json", "encode.json", "train.json", "report.json", "report.md")


def _fresh_copy(dest: Path) -> Path:
    """The tracked files as they are now, in a new git repository, sharing the service state."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / ".state").symlink_to(REPO_ROOT / ".state")  # credentials and the tiny models
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "fresh"]):
        subprocess.run(["git", *args], cwd=dest, check=True)
    return dest


def _dvc(repo: Path, *args: str, timeout: int = 900) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(repo)}
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def test_dvc_repro_push_pull_on_a_fresh_copy(pipeline_services, tmp_path):
    repo = _fresh_copy(tmp_path / "repo")
    configure(repo)
    _dvc(repo, "repro")
    evaluation = json.loads((repo / "out" / "evaluate.json").read_text())
    assert evaluation["result"]["fid"] > 0
    assert "cost" in (repo / "out" / "report.md").read_text().lower()
    assert "train" in (repo / "dvc.lock").read_text()

    again = _dvc(repo, "repro")
    assert "up to date" in again.lower(), again

    before = {name: (repo / "out" / name).read_bytes() for name in OUTS}
    _dvc(repo, "push")
    shutil.rmtree(repo / ".dvc" / "cache")
    for name in OUTS:
        (repo / "out" / name).unlink()
    _dvc(repo, "pull")
    assert {name: (repo / "out" / name).read_bytes() for name in OUTS} == before
    assert "up to date" in _dvc(repo, "status").lower()
