"""Measure a planner in a fresh child process, so its peak RSS is the planner's alone."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def generate_then_measure(script: str, path: Path, generate: Callable[[], None],
                          rows: int, extra: dict | None = None) -> dict:
    """Write the input file with `generate`, run `script --measure path` in a child process,
    and return its JSON line with the machine (and `extra`) added."""
    start = time.monotonic()
    generate()
    print(f"{rows:,} rows written in {time.monotonic() - start:.1f} s "
          f"({path.stat().st_size / 2**20:.0f} MiB)", file=sys.stderr)
    env = {**os.environ, "PYTHONPATH": str(Path(script).resolve().parents[1])}
    child = subprocess.run([sys.executable, script, "--measure", str(path)],
                           capture_output=True, text=True, check=True, env=env)
    return {**json.loads(child.stdout.strip().splitlines()[-1]), **(extra or {}),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
