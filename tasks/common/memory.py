"""The memory of each device a process can use: what the preflight and the ledger read.

On CUDA, each visible GPU's own memory (torch.cuda.get_device_properties for the total,
mem_get_info for what is free now); without CUDA, one entry for the host's memory, named as
such, so no record shows host RAM where GPU memory is meant.
"""

from __future__ import annotations

from typing import Any

GIB = 2 ** 30
HOST = "cpu: host memory"


def device_memory() -> list[dict[str, Any]]:
    """[{device, name, total_gib, free_gib}] per visible GPU, or one host-memory entry."""
    import psutil
    import torch

    if not torch.cuda.is_available():
        host = psutil.virtual_memory()
        return [{"device": "cpu", "name": HOST, "total_gib": round(host.total / GIB, 3),
                 "free_gib": round(host.available / GIB, 3)}]
    out = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        out.append({"device": f"cuda:{index}",
                    "name": torch.cuda.get_device_properties(index).name,
                    "total_gib": round(total / GIB, 3), "free_gib": round(free / GIB, 3)})
    return out


def describe(memory: list[dict[str, Any]]) -> str:
    """One line: `2 x NVIDIA H100 80GB HBM3, 79.2 GiB each` or `cpu: host memory, 7.8 GiB`."""
    if not memory:
        return "unknown"
    first = memory[0]
    if first["device"] == "cpu":
        return f"{HOST}, {first['total_gib']:.1f} GiB"
    return f"{len(memory)} x {first['name']}, {min(m['total_gib'] for m in memory):.1f} GiB each"
