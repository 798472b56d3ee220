"""Operational errors end `python -m tasks` with one line on stderr and exit status 1; the
traceback only with --debug (and in the log file); bad params keep exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from infra.settings import REPO_ROOT
from tasks.common.errors import one_line
from tasks.common.fetch import AccessDenied, FetchError, ScratchFull

OFF = {"enabled": False}


def _params(tmp_path: Path, coco: dict) -> Path:
    doc = {"extends": str(REPO_ROOT / "params.yaml"), "profile": "demo", "overrides": {
        "storage": {"raw_prefix": f"test/{uuid.uuid4().hex[:12]}/raw"},
        "download": {"timeout_s": 2.0, "archive_retries": 0, "coco": coco, "cc3m": OFF,
                     "sa1b": OFF, "textcaps": OFF, "journeydb": OFF, "diffusiondb": OFF}}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "tasks", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("location, says", [
    ("data/no-such-dir/captions_val2014.json", "check the path in the params file"),
    ("http://127.0.0.1:9/captions_val2014.json", "the host is unreachable"),
])
def test_missing_file_or_host_is_one_line_and_exit_1(location, says, tmp_path, s3_service):
    params = _params(tmp_path, {"annotations": location})
    plain = _run("download", "--params", str(params))
    assert plain.returncode == 1, plain.stderr
    lines = [line for line in plain.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and says in lines[-1] and location in lines[-1]
    assert "Traceback" not in plain.stderr
    log = lines[-1].rsplit("(traceback: ", 1)[1].rstrip(")")
    assert "Traceback" in Path(log).read_text()
    debug = _run("download", "--params", str(params), "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("error: ")


def test_bad_params_value_keeps_exit_2(tmp_path):
    params = _params(tmp_path, {"annotations": "x.json", "fraction": 0})
    result = _run("download", "--params", str(params))
    assert result.returncode == 2 and "fraction must be in" in result.stderr


def test_messages_name_cause_and_fix():
    assert "export HF_TOKEN" in one_line(AccessDenied(401, "https://huggingface.co/x"))
    assert "download.scratch_dir" in one_line(ScratchFull(Path("/s"), 10, 1))
    assert "rerun later" in one_line(FetchError("http_503", "https://h/x"))
    full = OSError(28, "No space left on device", "/s/x.tar")
    assert one_line(full).startswith("no space left on the device writing /s/x.tar")
    assert one_line(ValueError("a bug")) is None  # not operational: keeps its traceback
