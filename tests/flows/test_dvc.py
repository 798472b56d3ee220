"""`dvc repro` runs the demo pipeline end to end in a fresh copy of the repository; a second
repro has nothing to do; `dvc push` / `dvc pull` round-trip the outputs through the local S3."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from infra.dvc_remote import configure
from infra.settings import REPO_ROOT

BIN = Path(sys.executable).parent
OUTS = ("download.json", "caption.json", "encode.json", "train.json", "report.json", "report.md")


def _fresh_copy(dest: Path, storage: dict[str, str]) -> Path:
    """The tracked files as they are now, in a new git repository, on the suite's services (its
    state folder: MB_STATE_DIR), the tiny models and the `storage` prefixes."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    # params.yaml names the tiny models relative to the repository; they are only read.
    (dest / ".state").mkdir()
    (dest / ".state" / "models").symlink_to(REPO_ROOT / ".state" / "models")
    _quick_training(dest / "params.yaml", storage)
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "fresh"]):
        subprocess.run(["git", *args], cwd=dest, check=True)
    return dest


def _quick_training(path: Path, storage: dict[str, str]) -> None:
    """The copy's demo block with tests/params/quick_demo.yaml's few-step training and scoring
    (these tests check what DVC redoes, not learning) and the given storage prefixes."""
    import yaml

    quick = yaml.safe_load((REPO_ROOT / "tests" / "params" / "quick_demo.yaml").read_text())
    data = yaml.safe_load(path.read_text())
    for section, values in quick["overrides"].items():
        data["demo"][section].update(values)
    data["demo"]["storage"].update(storage)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _dvc(repo: Path, *args: str, timeout: int = 900) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(repo)}
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def _check_push_pull_and_views(repo: Path) -> None:
    """A repro's outputs come back from the remote byte for byte; metrics and plots read well."""
    before = {name: (repo / "out" / name).read_bytes() for name in OUTS}
    _dvc(repo, "push")
    shutil.rmtree(repo / ".dvc" / "cache")
    for name in OUTS:
        (repo / "out" / name).unlink()
    _dvc(repo, "pull")
    assert {name: (repo / "out" / name).read_bytes() for name in OUTS} == before
    assert "up to date" in _dvc(repo, "status").lower()

    # Readable: a compact metrics table, loss curves and sample grids as plots.
    table = _dvc(repo, "metrics", "show")
    assert "fid" in table and "cost_usd" in table and "protocol" not in table
    for stage in ("stage1", "stage2"):
        assert (repo / "out" / "plots" / "loss" / f"{stage}.csv").read_text().startswith(
            "step,loss\n1,")
    assert (repo / "out" / "plots" / "samples" / "stage2.png").read_bytes()[:4] == b"\x89PNG"
    _dvc(repo, "plots", "show", "-o", "plots-html")
    html = (repo / "plots-html" / "index.html").read_text()
    assert "stage1.csv" in html and "stage2.png" in html


def _edit_params(repo: Path, edit) -> None:
    import yaml

    path = repo / "params.yaml"
    data = yaml.safe_load(path.read_text())
    edit(data["demo"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _out(repo: Path, step: str) -> dict:
    return json.loads((repo / "out" / f"{step}.json").read_text())["result"]


def _commit(repo: Path, message: str) -> None:
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message],
                   cwd=repo, check=True)


def test_dvc_repro_pushes_pulls_and_redoes_exactly_what_changed(demo_corpus, tmp_path):
    """A fresh copy reproduces, pushes and pulls its outputs, and shows metrics and plots.
    Outputs are keyed by the params and inputs that made them: a changed stage learning rate
    retrains that stage onwards and re-evaluates; a changed caption length recaptions SA-1B and
    re-encodes only its latents; an unchanged repro runs nothing."""
    # The corpus's raw shards (new captions go beside the others, under their own key); latents
    # of its own, since the new captions re-encode SA-1B.
    latents = f"test/{uuid.uuid4().hex[:12]}/latents"
    repo = _fresh_copy(tmp_path / "repo", {**demo_corpus.storage, "latents_prefix": latents})
    configure(repo)
    _dvc(repo, "repro")
    evaluation = json.loads((repo / "out" / "evaluate.json").read_text())
    assert evaluation["result"]["fid"] > 0
    assert "cost" in (repo / "out" / "report.md").read_text().lower()
    assert "train" in (repo / "dvc.lock").read_text()
    assert "up to date" in _dvc(repo, "repro").lower()
    # One baseline serves both halves of the test (a repro is minutes on 2 cores).
    _check_push_pull_and_views(repo)
    _commit(repo, "baseline")
    before_train, before_eval = _out(repo, "train")["stages"], _out(repo, "evaluate")

    # 1. Stage 2's learning rate: stage 1 is found complete, stage 2 trains, evaluation reruns.
    _edit_params(repo, lambda d: d["train"]["stages"][1].update(lr=5.0e-5))
    log = _dvc(repo, "repro")
    assert "Running stage 'train'" in log and "Running stage 'evaluate'" in log
    assert "Running stage 'encode'" not in log and "Running stage 'caption'" not in log
    stages = _out(repo, "train")["stages"]
    assert stages["stage1"]["checkpoint"] == before_train["stage1"]["checkpoint"]
    assert stages["stage1"]["resumed_from_step"] == stages["stage1"]["steps"]  # nothing to do
    assert stages["stage2"]["checkpoint"] != before_train["stage2"]["checkpoint"]
    assert stages["stage2"]["resumed_from_step"] == 0
    evaluation = _out(repo, "evaluate")
    assert evaluation["checkpoint"] != before_eval["checkpoint"]
    assert evaluation["batches_generated"] > 0
    _commit(repo, "stage 2 lr")

    # 2. The caption length: SA-1B recaptioned and re-encoded, the other datasets untouched.
    before_encode = _out(repo, "encode")
    _edit_params(repo, lambda d: d["caption"].update(max_new_tokens=12))
    log = _dvc(repo, "repro")
    assert "Running stage 'download'" not in log
    captions = _out(repo, "caption")["sa1b"]
    assert captions["resumed_shards"] == 0 and captions["captioned"] > 0
    encoded = _out(repo, "encode")
    assert encoded["sa1b"]["samples_encoded_this_run"] == encoded["sa1b"]["samples"] > 0
    assert encoded["sa1b"]["shards_sha256"] != before_encode["sa1b"]["shards_sha256"]
    for dataset in ("cc3m", "textcaps", "journeydb", "diffusiondb"):
        assert encoded[dataset]["samples_encoded_this_run"] == 0
        assert encoded[dataset]["shards_sha256"] == before_encode[dataset]["shards_sha256"]
    retrained = _out(repo, "train")["stages"]
    assert retrained["stage1"]["resumed_from_step"] is None  # new latents: trained from scratch
    # DVC sees the data change through the shard digests its outputs hold.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(repo)}
    diff = json.loads(subprocess.run([str(BIN / "dvc"), "diff", "--json"], cwd=repo, env=env,
                                     capture_output=True, text=True, check=True).stdout)
    assert "out/encode.json" in {entry["path"] for entry in diff.get("modified", [])}
    _commit(repo, "caption length")

    # 3. Nothing changed: nothing runs.
    assert "up to date" in _dvc(repo, "repro").lower()

    # 4. An experiment with one value changed runs and compares beside the workspace.
    _dvc(repo, "exp", "run", "-n", "guidance-5", "-S", "demo.evaluate.guidance=5.0")
    shown = _dvc(repo, "exp", "show", "--csv")
    assert "guidance-5" in shown and "5.0" in shown
