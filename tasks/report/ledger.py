"""The cost ledger: what each step took in wall time, GPUs, GPU-hours and dollars.

A step's result is wrapped in an envelope {step, seconds, result} by whoever ran it (the CLI or
the flow). GPU steps hold one GPU per worker unless their result says otherwise (the trainer
reports its own GPU count and GPU-seconds); CPU steps are priced at the `cpu` rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tasks.common.cost import CostParams, cost_usd, gpu_hours

STEPS = ("download", "caption", "encode", "train", "evaluate")
GPU_STEPS = ("caption", "encode", "train", "evaluate")


@dataclass(frozen=True)
class LedgerRow:
    step: str
    seconds: float  # wall time of the step
    devices: int  # GPUs held (CPU steps: 1 machine)
    device_type: str  # price-list entry charged
    device_hours: float
    cost_usd: float


def envelope(step: str, result: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {"step": step, "seconds": round(seconds, 3), "result": result}


def ledger_row(env: dict[str, Any], cost: CostParams) -> LedgerRow:
    step, result = env["step"], env.get("result") or {}
    if step in GPU_STEPS and cost.gpu_type != "cpu":
        device_type, devices = cost.gpu_type, int(result.get("gpus", 1))
    else:
        device_type, devices = "cpu", 1
    seconds = float(result.get("gpu_seconds_per_device", env["seconds"]))
    rate = cost.usd_per_gpu_hour.get(device_type, 0.0)
    return LedgerRow(step=step, seconds=float(env["seconds"]), devices=devices,
                     device_type=device_type, device_hours=gpu_hours(seconds, devices),
                     cost_usd=cost_usd(seconds, devices, rate))


def ledger(envelopes: list[dict[str, Any]], cost: CostParams) -> list[LedgerRow]:
    return [ledger_row(env, cost) for env in envelopes]


def totals(rows: list[LedgerRow]) -> dict[str, float]:
    return {"seconds": sum(r.seconds for r in rows),
            "device_hours": sum(r.device_hours for r in rows),
            "cost_usd": sum(r.cost_usd for r in rows)}


def ledger_markdown(rows: list[LedgerRow]) -> str:
    total = totals(rows)
    lines = ["| step | wall time (s) | devices | type | device-hours | cost (USD) |",
             "|---|---:|---:|---|---:|---:|"]
    lines += [f"| {r.step} | {r.seconds:.1f} | {r.devices} | {r.device_type} | "
              f"{r.device_hours:.4f} | {r.cost_usd:.4f} |" for r in rows]
    lines.append(f"| **total** | {total['seconds']:.1f} | | | {total['device_hours']:.4f} | "
                 f"**{total['cost_usd']:.4f}** |")
    return "\n".join(lines)


def rows_as_dicts(rows: list[LedgerRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
