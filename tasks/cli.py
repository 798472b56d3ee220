"""One command line for every step: the same functions that DVC stages and Prefect tasks call.

    python -m tasks download [--params params.yaml] [--profile demo|full] [--dry-run] [--out F]

`--dry-run` prints the resolved configuration of the step (after profile selection and
validation) and exits without touching any service. `--out` writes the step's JSON summary
(manifest URIs, counts, metrics) to a file that DVC tracks.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import yaml

from infra.config import ConfigError, to_dict
from infra.settings import state_dir
from tasks.attempt import run_attempt
from tasks.common.driver import Local
from tasks.common.errors import report
from tasks.params import load_params
from tasks.steps import NAMES, step

COMMANDS = ("check", "plan", *NAMES)
# Commands outside the pipeline, each with its own parser: `python -m tasks import|sample ...`.
# Imported by name like the steps; no stage runs them, so no stage depends on their files.
TOOLS = {"import": "importer", "sample": "sample"}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tasks", description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=COMMANDS,
                    help="a step; check: the preflight; plan: the projected bill")
    ap.add_argument("--params", type=Path, default=None, help="params file (default params.yaml)")
    ap.add_argument("--profile", default=None,
                    help="override params.yaml profile (demo, full or a variant in it)")
    ap.add_argument("--compare", default=None, metavar="PROFILE",
                    help="plan: also print this profile's stages beside --profile's")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON summary here")
    ap.add_argument("--debug", action="store_true",
                    help="print the traceback of an operational error, not only its one line")
    return ap


def resolved(params, name: str) -> dict:
    """What --dry-run prints: the profile, storage and cost, and the sections the step reads
    (the table's, tasks/steps.py)."""
    full = to_dict(params)
    return {k: full[k] for k in dict.fromkeys(("profile", "storage", "cost",
                                               *step(name).sections))}


def check(params) -> int:
    from tasks.check import PreflightError, preflight, render

    try:
        result = preflight(params)
    except PreflightError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(render(result, params.train.gpu_memory_gib))
    return 0


def plan_command(params, compare: str | None, params_file: Path | None) -> int:
    from tasks.plan import plan, render, render_compare

    print(render(params, plan(params)))
    if compare:
        try:
            other = load_params(params_file, compare)
        except ConfigError as err:
            print(f"error in params: {err}", file=sys.stderr)
            return 2
        print()
        print(render_compare(params, other))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOOLS:
        return importlib.import_module(f"tasks.{TOOLS[argv[0]]}.cli").main(argv[1:])
    args = parser().parse_args(argv)
    try:
        params = load_params(args.params, args.profile)
    except ConfigError as err:
        print(f"error in params: {err}", file=sys.stderr)
        return 2
    if args.step == "check":
        return check(params)
    if args.step == "plan":
        return plan_command(params, args.compare, args.params)
    if args.dry_run:
        print(yaml.safe_dump(resolved(params, args.step), sort_keys=False), end="")
        return 0
    entry = step(args.step)
    # The body the flow calls too (tasks/steps.py), imported only now: a stage runs, and
    # depends on, its own step's code alone.
    body = entry.load()
    try:
        if entry.priced:
            # The envelope carries the wall time that the report prices and where the
            # step's attempts are recorded.
            summary = run_attempt(params, args.step, lambda: body(params, Local()))
        else:
            summary = body(params, Local())
    except Exception as err:  # noqa: BLE001 - report() re-raises anything not operational
        log = state_dir() / "logs" / f"tasks-{args.step}-error.log"
        return report(err, args.debug, log)
    text = json.dumps(summary, indent=2, sort_keys=True, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
