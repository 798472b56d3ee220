"""Data parallelism for a stage: DDP (default) or FSDP (fully_shard), and full-state I/O.

Checkpoints always hold full, unsharded tensors with parameter names as keys, whatever the
backend or world size, so a run can resume on a different number of GPUs or switch backend.
Under FSDP the gathers are collectives: every rank calls these functions, rank 0 writes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.nn.parallel import DistributedDataParallel

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def is_sharded(net: nn.Module) -> bool:
    return any(hasattr(p, "full_tensor") for p in net.parameters())


def wrap(net: nn.Module, world: int, backend: str, device: torch.device) -> nn.Module:
    """The module that the training step calls. FSDP shards each transformer block (patch-mixer
    and backbone) and then the rest, so only one block's weights are whole at a time."""
    if world == 1:
        return net
    if backend == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in [*net.mixer, *net.blocks]:
            fully_shard(block)
        fully_shard(net)
        return net
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def model_weights(net: nn.Module) -> dict[str, torch.Tensor] | None:
    """Full weights on rank 0 (empty elsewhere) when sharded; None: use net.state_dict()."""
    return get_model_state_dict(net, options=FULL) if is_sharded(net) else None


def optimizer_state(net: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter names, full tensors, on CPU (rank 0 when sharded)."""
    return get_optimizer_state_dict(net, optimizer, options=FULL)


def load_optimizer_state(net: nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict[str, Any]) -> None:
    """Load a full, name-keyed optimizer state (every rank holds it) into a possibly sharded
    model's optimizer. A state keyed by position (checkpoints written before name keys) loads
    into an unsharded model only."""
    if any(isinstance(key, int) for key in state.get("state", {})):
        if is_sharded(net):
            raise ValueError("this checkpoint's optimizer state is keyed by position (an older "
                             "format); resume it once with backend ddp, which rewrites it")
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(net, optimizer, state,
                             options=StateDictOptions(full_state_dict=True))
