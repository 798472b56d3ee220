"""Merge the GPU suite's parts into one JSON, with the ratios and goals of issue 18.

    python -m benchmarks.gpu_suite_merge WORK_DIR RESULT_JSON [--smoke 0|1] [--seconds S]

Reads what benchmarks/gpu_suite.sh left in WORK_DIR: env.json, parts.tsv (name, rc, seconds,
limit), train-<case>.json (benchmarks.gpu_train) and the encode and caption logs, whose
markdown tables are the scripts' own output.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
from pathlib import Path
from typing import Any

TRAIN_CASES = ("ours-m75", "reference-m75", "ours-m0", "reference-m0")
# Goals of issue 18; a ratio is ours over the reference measured in the same run.
GOALS = {"train_m75": 1.5, "train_memory_gib": 60.0, "encode": 2.0, "caption": 3.0,
         "loader": 0.95}


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def parts(work: Path) -> dict[str, dict[str, Any]]:
    rows = {}
    tsv = work / "parts.tsv"
    for line in tsv.read_text().splitlines() if tsv.exists() else []:
        name, rc, seconds, limit = line.split("\t")
        rows[name] = {"rc": rc, "seconds": int(seconds), "limit_s": int(limit),
                      "timed_out": rc in ("124", "137")}
    return rows


def table_rows(log: Path) -> dict[str, float]:
    """`| name | number |` rows of a benchmark's markdown output."""
    if not log.exists():
        return {}
    rows = {}
    for name, value in re.findall(r"^\| ([^|]+?) \| ([0-9][0-9.,]*) \|$", log.read_text(),
                                  flags=re.M):
        rows[name] = float(value.replace(",", ""))
    return rows


def first_json_line(log: Path) -> dict[str, Any]:
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def ratio(ours: float | None, reference: float | None) -> float | None:
    return round(ours / reference, 3) if ours and reference else None


def train(work: Path) -> dict[str, Any]:
    cases = {name: read_json(work / f"train-{name}.json") or {"error": "no result (see log)"}
             for name in TRAIN_CASES}
    out: dict[str, Any] = {"cases": cases}
    for label, ours, ref in (("mask0.75_b256", "ours-m75", "reference-m75"),
                             ("mask0_b128", "ours-m0", "reference-m0")):
        out[f"ratio_{label}"] = ratio(cases[ours].get("images_per_s"),
                                      cases[ref].get("images_per_s"))
    ours = cases["ours-m75"]
    r = out["ratio_mask0.75_b256"]
    out["goal_met"] = (r is not None and r >= GOALS["train_m75"]
                       and ours.get("peak_memory_gib", 1e9) <= GOALS["train_memory_gib"])
    return out


def encode(work: Path) -> dict[str, Any]:
    rows = table_rows(work / "encode.log")
    ours = next((v for k, v in rows.items() if k.startswith("ours")), None)
    ref = next((v for k, v in rows.items() if k.startswith("reference")), None)
    r = ratio(ours, ref)
    return {"settings": first_json_line(work / "encode.log"), "images_per_s": rows,
            "ratio": r, "goal_met": r is not None and r >= GOALS["encode"]}


def caption(work: Path) -> dict[str, Any]:
    rows = table_rows(work / "caption.log")
    r = ratio(rows.get("ours"), rows.get("plain generate, batch 32"))
    return {"settings": first_json_line(work / "caption.log"), "captions_per_s": rows,
            "ratio": r, "goal_met": r is not None and r >= GOALS["caption"]}


def loader(train_part: dict[str, Any]) -> dict[str, Any]:
    result = dict(train_part["cases"]["ours-m75"].get("loader") or {"error": "not run"})
    r = result.get("loader_over_synthetic")
    result["goal_met"] = r is not None and r >= GOALS["loader"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("result", type=Path)
    ap.add_argument("--smoke", default="0")
    ap.add_argument("--seconds", type=int, default=None)
    ap.add_argument("--command", default="bash benchmarks/gpu_suite.sh")
    args = ap.parse_args()
    train_part = train(args.work)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": args.command, "smoke": args.smoke == "1", "suite_seconds": args.seconds,
        "env": read_json(args.work / "env.json") or {}, "goals": GOALS,
        "parts": parts(args.work), "train": train_part, "encode": encode(args.work),
        "caption": caption(args.work), "loader": loader(train_part)}
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(report, indent=2) + "\n")
    summary = {"train_ratio_m75": train_part["ratio_mask0.75_b256"],
               "train_ratio_m0": train_part["ratio_mask0_b128"],
               "ours_m75_peak_gib": train_part["cases"]["ours-m75"].get("peak_memory_gib"),
               "encode_ratio": report["encode"]["ratio"],
               "caption_ratio": report["caption"]["ratio"],
               "loader_over_synthetic": report["loader"].get("loader_over_synthetic")}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
