"""Two gloo processes (DDP or FSDP) on halves of a global batch take the same steps as one
process on the whole batch."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model.config import preset
from model.edm import EDMLoss, EDMPrecond
from model.microdit import build_model
from model.optim import param_groups
from tasks.train.config import StageParams
from tasks.train import parallel
from tasks.train.loop import global_mean, train_step

GLOBAL_BATCH = 8
STEPS = 2
STAGE = StageParams(name="stage1", resolution=64, mask_ratio=0.75, steps=STEPS, lr=1e-3,
                    grad_clip=0.25)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(preset("tiny"))


def _optimizer(net: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(net, STAGE.lr, 0.0), betas=(0.9, 0.999))


def _global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    cfg = preset("tiny")
    return (torch.randn(GLOBAL_BATCH, cfg.latent_channels, cfg.input_size, cfg.input_size, generator=g),
            torch.randn(GLOBAL_BATCH, 6, cfg.caption_dim, generator=g))


def _noise(step: int, rank: int) -> torch.Generator:
    """Each rank's noise stream; the one-process reference replays them per half-batch."""
    return torch.Generator().manual_seed(1000 * step + rank)


def _rank_main(rank: int, world: int, port: int, out_dir: str, backend: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    net = _net()
    precond = EDMPrecond(parallel.wrap(net, world, backend, torch.device("cpu")))
    optimizer = _optimizer(net)  # after wrap: FSDP replaces the parameters
    loss_fn = EDMLoss(caption_drop_prob=0.0)
    share = GLOBAL_BATCH // world
    losses = []
    for step in range(STEPS):
        latents, text = _global_batch(step)
        mine = slice(rank * share, (rank + 1) * share)
        batch = {"latents": latents[mine], "text": text[mine]}
        loss, _ = train_step(precond, loss_fn, optimizer, [batch], STAGE, None,
                             _noise(step, rank))
        losses.append(float(global_mean(loss)))
    weights = parallel.model_weights(net)  # a collective under FSDP
    if rank == 0:
        torch.save(weights if weights is not None else net.state_dict(),
                   os.path.join(out_dir, "ddp.pt"))
        with open(os.path.join(out_dir, "ddp.json"), "w") as fh:
            json.dump(losses, fh)
    dist.destroy_process_group()


def _one_process(world: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The same global batch in one process: each half with its rank's noise, mean loss."""
    net = _net()
    precond = EDMPrecond(net)
    optimizer = _optimizer(net)
    loss_fn = EDMLoss(caption_drop_prob=0.0)
    share = GLOBAL_BATCH // world
    losses = []
    for step in range(STEPS):
        latents, text = _global_batch(step)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for rank in range(world):
            mine = slice(rank * share, (rank + 1) * share)
            loss = loss_fn(precond, latents[mine], text[mine], STAGE.mask_ratio,
                           _noise(step, rank)) / world
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(net.parameters(), STAGE.grad_clip)
        optimizer.step()
        losses.append(total)
    return losses, net.state_dict()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("backend", ["ddp", "fsdp"])
def test_two_processes_match_one_process_on_the_global_batch(tmp_path, backend):
    world = 2
    mp.start_processes(_rank_main, args=(world, _free_port(), str(tmp_path), backend),
                       nprocs=world, join=True, start_method="spawn")
    ddp_losses = json.loads((tmp_path / "ddp.json").read_text())
    ddp_state = torch.load(tmp_path / "ddp.pt")
    ref_losses, ref_state = _one_process(world)
    assert ddp_losses == pytest.approx(ref_losses, rel=1e-5)
    assert ddp_losses[0] != ddp_losses[1]  # the first step changed the weights
    for name, ref in ref_state.items():
        torch.testing.assert_close(ddp_state[name], ref, rtol=1e-4, atol=1e-6, msg=name)


def test_optimizer_state_round_trips_by_parameter_name():
    net, other = _net(), _net()
    optimizer, fresh = _optimizer(net), _optimizer(other)
    latents, text = _global_batch(0)
    EDMLoss()(EDMPrecond(net), latents, text, 0.5, _noise(0, 0)).backward()
    optimizer.step()
    saved = parallel.optimizer_state(net, optimizer)
    assert all(isinstance(name, str) for name in saved["state"])  # keyed by name, not position
    parallel.load_optimizer_state(other, fresh, saved)
    got, want = fresh.state_dict(), optimizer.state_dict()
    assert got["state"].keys() == want["state"].keys()
    for index, moments in want["state"].items():
        for key, value in moments.items():
            torch.testing.assert_close(got["state"][index][key], value)


def test_position_keyed_optimizer_state_of_older_checkpoints_still_loads():
    net, other = _net(), _net()
    optimizer, fresh = _optimizer(net), _optimizer(other)
    latents, text = _global_batch(0)
    EDMLoss()(EDMPrecond(net), latents, text, 0.5, _noise(0, 0)).backward()
    optimizer.step()
    parallel.load_optimizer_state(other, fresh, optimizer.state_dict())
    first = next(iter(optimizer.state_dict()["state"]))
    torch.testing.assert_close(fresh.state_dict()["state"][first]["exp_avg"],
                               optimizer.state_dict()["state"][first]["exp_avg"])
