"""The device a params `device` setting names, for every step that runs torch.

The training loop picks its own (tasks/train/loop.py): under torchrun each rank takes the CUDA
device of its local rank.
"""

from __future__ import annotations

import torch


def pick_device(setting: str) -> torch.device:
    """"auto" is CUDA when this machine has it, else the CPU; anything else is a torch device
    name. A CUDA device asked for on a machine without CUDA fails here, naming the setting,
    instead of at the first tensor moved."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device is {setting!r} but no CUDA device is available")
    return device
