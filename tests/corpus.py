"""End-to-end fixtures (registered by tests/conftest.py): one demo corpus per test session,
built once and read by every test that starts from a downloaded, captioned and encoded corpus
instead of building its own. Under pytest-xdist one worker runs all of them (CORPUS_FILES in
tests/conftest.py), so a run builds it once.

A test that only reads the corpus writes its params with `quick_params` (or lays
`demo_corpus.storage` over its own overrides): its download, caption and encode steps then find
every shard committed and skip it. A test that deletes, recaptions or re-encodes data keeps
prefixes of its own (test_pipeline.py starts from nothing; test_dvc.py's changed caption length
re-encodes into its own latents prefix)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from infra.settings import REPO_ROOT
from tasks.params import merge

# The demo with few-step training and scoring (tests/params/quick_demo.yaml): the flow tests
# check orchestration, resumption, keys and records, not learning.
QUICK = REPO_ROOT / "tests" / "params" / "quick_demo.yaml"
CORPUS_STEPS = ("download", "caption", "encode")


@dataclass(frozen=True)
class Corpus:
    """Where this test run's demo corpus lives: storage overrides for a params file."""

    storage: dict[str, str]

    @property
    def key(self) -> str:
        """The prefix raw/ and latents/ live under (benchmarks/demo_learning.py's `key`)."""
        return self.storage["raw_prefix"].removesuffix("/raw")


def write_params(path: Path, overrides: dict[str, Any], extends: Path = QUICK) -> Path:
    """A params file that extends `extends` (its profile) with `overrides`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"extends": str(extends), "overrides": overrides},
                                   sort_keys=False))
    return path


@pytest.fixture(scope="session")
def demo_corpus(pipeline_services, tmp_path_factory) -> Corpus:
    """The demo corpus downloaded, captioned and encoded once per test run, through the CLI
    (the steps DVC runs), under a prefix of its own."""
    root = f"test/corpus-{uuid.uuid4().hex[:8]}"
    corpus = Corpus({"raw_prefix": f"{root}/raw", "latents_prefix": f"{root}/latents"})
    folder = tmp_path_factory.mktemp("corpus")
    path = write_params(folder / "params.yaml", {"storage": {**corpus.storage,
                                                             "out_dir": str(folder / "out")}})
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for step in CORPUS_STEPS:
        done = subprocess.run([sys.executable, "-m", "tasks", step, "--params", str(path)],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=1200)
        assert done.returncode == 0, f"the demo corpus's {step} failed:\n{done.stderr[-3000:]}"
    return corpus


@pytest.fixture
def quick_params(demo_corpus, tmp_path) -> Callable[..., Path]:
    """`make(overrides=None, name="params")`: a params file on the quick demo that reads this
    run's corpus, with `overrides` merged over it (its storage too)."""

    def make(overrides: dict[str, Any] | None = None, name: str = "params") -> Path:
        base = {"storage": {**demo_corpus.storage, "out_dir": str(tmp_path / "out")}}
        return write_params(tmp_path / f"{name}.yaml", merge(base, overrides or {}, "overrides"))

    return make
