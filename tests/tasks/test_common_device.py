"""One device picker for the steps (tasks/common/device.py)."""

from __future__ import annotations

import pytest
import torch

from tasks.common.device import pick_device


def test_auto_takes_cuda_only_when_there_is_one():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_fails_naming_the_setting():
    with pytest.raises(RuntimeError, match="device is 'cuda:1' but no CUDA device"):
        pick_device("cuda:1")
