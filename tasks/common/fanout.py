"""One process per device: a worker's share of a step's units, spread over its devices.

Device i of n takes units i, i+n, i+2n, ... in its own child process, which loads the step's
models once (on first use, so a child whose units are all committed loads nothing) and runs
every unit it was given with them. n is the number of visible CUDA devices (each child sees one,
through CUDA_VISIBLE_DEVICES), or `MB_DEVICES` when set: on a CPU-only machine it defaults to 1,
and tests set it to 2 to run two "devices" as two processes.

A step module (tasks.caption.step, tasks.encode.step) provides the two functions a child calls:
`load_models(params)` and `process_unit(models, params, dataset, unit) -> dict`. The children
get the exact params this process resolved, as text with its hash in their environment
(tasks.params.resolved_env), and each writes its per-unit results to its own JSON file after
every unit, so a failure names the device and the unit. Commits are atomic
(tasks/common/shards.py): a killed child's units are redone by the next run, and units it
committed before dying are skipped then.

Child usage (started by `run_on_devices`, not by hand):
    python -m tasks.common.fanout --module M --dataset D --units UNITS.json --device I
        --devices N --out RESULT.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Any, Callable

from infra.settings import REPO_ROOT
from tasks.params import Params, params_from_env, resolved_env

DEVICES_ENV = "MB_DEVICES"


def visible_cuda_devices() -> list[str]:
    """The CUDA device ids this process may use, as CUDA_VISIBLE_DEVICES names them."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def device_count() -> int:
    """Processes per worker: `MB_DEVICES` if set, else the visible CUDA devices, else 1."""
    setting = os.environ.get(DEVICES_ENV)
    if setting:
        if not setting.isdigit() or int(setting) < 1:
            raise ValueError(f"{DEVICES_ENV}={setting!r}: expected a positive integer")
        return int(setting)
    return max(1, len(visible_cuda_devices()))


class Lazy:
    """A step's models, loaded on first attribute access and then kept; counts its loads.

    Passed where the unit functions take a preloaded model (encode_unit's `encoders`,
    caption_shard's `captioner`), so a process loads its models at most once however many
    units it runs, and not at all when every unit was already committed."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load = load
        self._value: Any = None
        # The caption path prepares the next batch in a thread: both may ask first.
        self._lock = threading.Lock()
        self.loads = 0

    def get(self) -> Any:
        with self._lock:
            if self._value is None:
                self._value = self._load()
                self.loads += 1
        return self._value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.get(), name)


def process_units(module: str, params: Params, dataset: str, numbered: list[tuple[int, Any]],
                  device: int, report: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Run the given (index, unit) pairs in this process with one set of models.

    `report` receives the running record after every unit and on failure; a failure is
    re-raised after it is reported."""
    step = importlib.import_module(module)
    models = Lazy(lambda: step.load_models(params))
    record: dict[str, Any] = {"device": device, "pid": os.getpid(), "done": [], "failed": None}
    for index, unit in numbered:
        try:
            result = step.process_unit(models, params, dataset, unit)
        except BaseException as err:
            record["failed"] = {"index": index, "unit": unit, "error": f"{type(err).__name__}: "
                                f"{err}", "traceback": traceback.format_exc()}
            report(record)
            raise
        record["done"].append({"index": index, "device": device, "pid": os.getpid(),
                               "models_loaded": models.loads, "result": result})
        report(record)
    return record["done"]


def child_env(params: Params, device: int, devices: int) -> dict[str, str]:
    """The resolved params; child i sees CUDA device i (round robin when MB_DEVICES exceeds
    them); on CPU the cores are split between the children instead of each taking all."""
    env = {**os.environ, **resolved_env(params), "PYTHONPATH": str(REPO_ROOT)}
    cuda = visible_cuda_devices()
    if cuda:
        env["CUDA_VISIBLE_DEVICES"] = cuda[device % len(cuda)]
    else:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    return env


def failure_message(module: str, record: dict[str, Any] | None, device: int, code: int,
                    assigned: int) -> str:
    step = module.split(".")[1] if module.count(".") >= 2 else module
    failed = (record or {}).get("failed")
    if failed:
        return (f"{step} device {device} (pid {record['pid']}) failed on unit {failed['index']} "
                f"{failed['unit']}: {failed['error']}")
    done = len((record or {}).get("done", []))
    return (f"{step} device {device} exited with {code} after {done} of {assigned} units "
            "(killed?); a rerun redoes its uncommitted units")


def run_on_devices(module: str, params: Params, dataset: str, units: list[Any],
                   indices: list[int] | None = None) -> list[dict[str, Any]]:
    """Run `units` on this machine's devices; returns one record per unit, in unit order:
    {index, device, pid, models_loaded, result}. `indices` numbers the units (default 0..).

    One device runs in this process; more run as one child process each."""
    indices = list(range(len(units))) if indices is None else list(indices)
    numbered = list(zip(indices, units))
    devices = min(device_count(), len(units))
    if devices <= 1:
        return process_units(module, params, dataset, numbered, 0, lambda record: None)
    with tempfile.TemporaryDirectory(prefix="mb-fanout-") as tmp:
        folder = Path(tmp)
        units_path = folder / "units.json"
        units_path.write_text(json.dumps({"indices": indices, "units": units}))
        children = []
        for device in range(devices):
            out = folder / f"device-{device}.json"
            cmd = [sys.executable, "-m", "tasks.common.fanout", "--module", module,
                   "--dataset", dataset, "--units", str(units_path), "--device", str(device),
                   "--devices", str(devices), "--out", str(out)]
            env = child_env(params, device, devices)
            children.append((device, out, subprocess.Popen(cmd, cwd=REPO_ROOT, env=env)))
        records, errors = [], []
        for device, out, proc in children:
            code = proc.wait()
            record = json.loads(out.read_text()) if out.exists() else None
            if code != 0 or record is None or record["failed"]:
                errors.append(failure_message(module, record, device, code,
                                              len(numbered[device::devices])))
            else:
                records.extend(record["done"])
    if errors:
        raise RuntimeError("; ".join(errors))
    return sorted(records, key=lambda r: r["index"])


def run_chunk(module: str, params: Params, dataset: str, indices: list[int],
              units: list[Any]) -> dict[str, Any]:
    """One share of a dataset's units on this machine's devices, with where it ran: the worker
    and flow run when a Prefect worker runs it (None from the command line)."""
    from prefect.runtime import flow_run

    records = run_on_devices(module, params, dataset, units, indices)
    return {"worker": os.environ.get("PREFECT__WORKER_NAME"), "host": socket.gethostname(),
            "pid": os.getpid(), "flow_run": flow_run.get_id(),
            "devices": min(device_count(), len(units)), "records": records}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` atomically, so the parent never reads half a record."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tasks.common.fanout",
                                 description="one device's share of a step's units")
    ap.add_argument("--module", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--units", type=Path, required=True)
    ap.add_argument("--device", type=int, required=True)
    ap.add_argument("--devices", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    params = params_from_env()
    if params is None:
        ap.error("no params in the environment: run_on_devices starts this with resolved_env")
    plan = json.loads(args.units.read_text())
    numbered = list(zip(plan["indices"], plan["units"]))[args.device::args.devices]
    try:
        process_units(args.module, params, args.dataset, numbered, args.device,
                      lambda record: write_json(args.out, record))
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
