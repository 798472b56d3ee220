"""Fixtures for the model tests: tiny networks on the CPU, one thread."""

from __future__ import annotations

import pytest
import torch

from model.config import MicroDiTConfig, preset
from model.microdit import MicroDiT, build_model
from tests.model.helpers import randomized

torch.set_num_threads(1)


@pytest.fixture
def tiny_config() -> MicroDiTConfig:
    return preset("tiny")


@pytest.fixture
def tiny_model(tiny_config: MicroDiTConfig) -> MicroDiT:
    torch.manual_seed(0)
    return randomized(build_model(tiny_config))