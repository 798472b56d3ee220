"""Resolved params as they travel between processes: text plus its sha256, checked on arrival."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from infra.config import ConfigError
from infra.settings import REPO_ROOT
from tasks.params import (RESOLVED_SHA_ENV, dumps_resolved, load_params, loads_resolved,
                          resolved_env)


def test_the_text_carries_its_own_profile_and_hash(monkeypatch):
    full = load_params(profile="full")
    text, sha256 = dumps_resolved(full)
    assert sha256 == hashlib.sha256(text.encode()).hexdigest()
    # A receiver whose machine selects another profile still loads the one that was approved.
    monkeypatch.setenv("MB_PROFILE", "demo")
    assert loads_resolved(text, sha256) == full
    assert dumps_resolved(load_params(profile="demo"))[1] != sha256


def test_a_changed_text_or_a_wrong_hash_is_refused():
    text, sha256 = dumps_resolved(load_params(profile="demo"))
    changed = text.replace("run_name: demo", "run_name: other")
    assert changed != text
    with pytest.raises(ConfigError, match=f"not the approved {sha256[:12]}"):
        loads_resolved(changed, sha256)
    with pytest.raises(ConfigError, match="changed on the way"):
        loads_resolved(text, "0" * 64)


def test_a_child_process_reads_the_params_from_its_environment_not_its_checkout():
    demo = load_params(profile="demo")
    code = ("from tasks.params import params_from_env; p = params_from_env(); "
            "print(p.profile, p.train.run_name)")
    env = {**os.environ, **resolved_env(demo), "PYTHONPATH": str(REPO_ROOT), "MB_PROFILE": "full"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["demo", demo.train.run_name]
    env[RESOLVED_SHA_ENV] = "f" * 64
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "changed on the way" in bad.stderr
