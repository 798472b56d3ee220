"""The end-of-stage sample grid runs on the device the stage trained on."""

from __future__ import annotations

import dataclasses

import torch

from tasks.params import load_params
from tasks.train import launch


def test_grid_device_is_the_training_device(monkeypatch):
    params = load_params(profile="demo")
    assert launch.grid_device(params) == torch.device("cpu")
    full = load_params(profile="full")
    picked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", picked.append)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert launch.grid_device(full) == torch.device("cuda", 3) and picked == [3]
    cpu = dataclasses.replace(full, train=dataclasses.replace(full.train, device="cpu"))
    assert launch.grid_device(cpu) == torch.device("cpu")


def test_stage_grid_moves_the_checkpoint_to_that_device(monkeypatch, s3_prefix, tmp_path):
    from model.config import preset
    from model.microdit import build_model
    from tasks.train import checkpoint

    net = build_model(preset("tiny"))
    pointer = checkpoint.save(s3_prefix, net, net, {"step": 1}, 1, 8)
    seen = []
    monkeypatch.setattr(launch, "grid_device", lambda params: torch.device("meta"))
    monkeypatch.setattr("tasks.train.tracking.sample_grid",
                        lambda params, model: seen.append(next(model.parameters()).device)
                        or b"png")
    assert launch.stage_grid(load_params(profile="demo"), pointer.uri) == b"png"
    assert seen == [torch.device("meta")]
