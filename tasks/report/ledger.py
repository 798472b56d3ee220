"""The cost ledger: what each step took in wall time, devices, device-hours and dollars.

A step's result is wrapped in an envelope {step, seconds, result} by whoever ran it (the CLI or
the flow); the step table (tasks/steps.py) says which steps have a row and which are priced per
GPU. Every row is priced by the one rule (tasks/common/cost.py price): device wall time x
devices used x price. GPU steps report the devices they used (`gpus`: the fan-out's device
processes, the trainer's ranks) and the trainer its held seconds per device; CPU steps are one
machine at the `cpu` rate.

Two figures per row: `cost_usd` is what this run spent on the step; `model_cost_usd` is what
the step's outputs cost over every attempt that produced them (failed, killed and cached runs
included, tasks/common/attempts.py), where attempts are recorded, else this run's figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tasks.common.cost import CostParams, Price, price
from tasks.common.memory import describe
from tasks.steps import step as table_entry


@dataclass(frozen=True)
class LedgerRow:
    step: str
    seconds: float  # wall time of the step in this run
    devices: int  # devices used (CPU steps: 1 machine)
    device_type: str  # price-list entry charged
    device_hours: float  # this run
    cost_usd: float  # this run
    model_device_hours: float  # every attempt at the step's outputs
    model_cost_usd: float
    device_memory: str = ""  # per device, as the step's nodes measured it (training)


def envelope(step: str, result: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {"step": step, "seconds": round(seconds, 3), "result": result}


def ledger_row(env: dict[str, Any], cost: CostParams, model: Price | None = None) -> LedgerRow:
    """One step's row; `model` is the price of every recorded attempt at its outputs."""
    step, result = env["step"], env.get("result") or {}
    seconds = float(result.get("gpu_seconds_per_device", env["seconds"]))
    spent = price(cost, seconds, int(result.get("gpus", 1)), on_gpu=table_entry(step).gpu)
    model = model if model is not None and model.cost_usd >= spent.cost_usd else spent
    nodes = [n for stage in (result.get("stages") or {}).values() for n in stage.get("nodes", [])]
    memory = next((describe(n["device_memory"]) for n in nodes if n.get("device_memory")), "")
    return LedgerRow(step=step, seconds=float(env["seconds"]), devices=spent.devices,
                     device_type=spent.device_type, device_hours=spent.device_hours,
                     cost_usd=spent.cost_usd, model_device_hours=model.device_hours,
                     model_cost_usd=model.cost_usd, device_memory=memory)


def ledger(envelopes: list[dict[str, Any]], cost: CostParams,
           model: dict[str, Price] | None = None) -> list[LedgerRow]:
    return [ledger_row(env, cost, (model or {}).get(env["step"])) for env in envelopes]


def totals(rows: list[LedgerRow]) -> dict[str, float]:
    return {"seconds": sum(r.seconds for r in rows),
            "device_hours": sum(r.device_hours for r in rows),
            "cost_usd": sum(r.cost_usd for r in rows),
            "model_device_hours": sum(r.model_device_hours for r in rows),
            "model_cost_usd": sum(r.model_cost_usd for r in rows)}


def ledger_markdown(rows: list[LedgerRow]) -> str:
    total = totals(rows)
    lines = ["| step | wall time (s) | devices | type | device memory | device-hours | "
             "this run (USD) | model, all attempts (USD) |",
             "|---|---:|---:|---|---|---:|---:|---:|"]
    lines += [f"| {r.step} | {r.seconds:.1f} | {r.devices} | {r.device_type} | "
              f"{r.device_memory or '-'} | {r.device_hours:.4f} | {r.cost_usd:.4f} | "
              f"{r.model_cost_usd:.4f} |" for r in rows]
    lines.append(f"| **total** | {total['seconds']:.1f} | | | | {total['device_hours']:.4f} | "
                 f"**{total['cost_usd']:.4f}** | **{total['model_cost_usd']:.4f}** |")
    return "\n".join([f"This run spent ${total['cost_usd']:.4f}; the model cost "
                       f"${total['model_cost_usd']:.4f} (every attempt that produced its "
                       "inputs, failed and cached ones included, where recorded).", "",
                       *lines])


def rows_as_dicts(rows: list[LedgerRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
