"""OpenMP's wait policy when torch processes share the cores: the demo-size training step of
benchmarks/train_step.py, run alone and as several processes at once, under each policy.

`make test` runs two pytest-xdist workers, each with step processes of its own, on a 2-core
machine: more torch threads are runnable than there are cores. With libgomp's default an idle
thread spins before it sleeps, and the spinning threads take the cores from the busy ones.

Usage: python -m benchmarks.omp_wait [--side-by-side 2] [--policies default PASSIVE]
Prints one line per (policy, processes at once) with each process's mean step time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from infra.settings import REPO_ROOT

# The demo's stage-2 step on 2 threads (docs/benchmarks.md, "Text length 24 and batch 32").
STEP = ["-m", "benchmarks.train_step", "--preset", "tiny", "--device", "cpu", "--override",
        "input_size=16", "caption_dim=64", "--caption-len", "24", "--batch", "32",
        "--mask-ratios", "0", "--warmup", "3", "--steps", "20"]


def policy_environ(policy: str) -> dict[str, str]:
    """This environment with OMP_WAIT_POLICY set to `policy` ("default": unset)."""
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy != "default":
        environ["OMP_WAIT_POLICY"] = policy
    environ["PYTHONPATH"] = str(REPO_ROOT)
    return environ


def step_seconds(policy: str, processes: int) -> list[float]:
    """Mean step time of each of `processes` identical step benchmarks started together."""
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"{i}.json" for i in range(processes)]
        running = [subprocess.Popen([sys.executable, *STEP, "--json", str(out)],
                                    cwd=REPO_ROOT, env=policy_environ(policy),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for out in outs]
        for proc in running:
            if proc.wait() != 0:
                raise RuntimeError(f"benchmarks.train_step failed under {policy}")
        return [_mean_step(out) for out in outs]


def _mean_step(path: Path) -> float:
    return float(json.loads(path.read_text())["results"][0]["step_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side-by-side", type=int, default=2)
    parser.add_argument("--policies", nargs="+", default=["default", "PASSIVE"])
    args = parser.parse_args()
    print("| OMP_WAIT_POLICY | processes at once | step s (each) |")
    print("|---|---|---|")
    for processes in (1, args.side_by_side):
        for policy in args.policies:
            times = step_seconds(policy, processes)
            print(f"| {policy} | {processes} | {' / '.join(f'{t:.3f}' for t in times)} |",
                  flush=True)


if __name__ == "__main__":
    main()
