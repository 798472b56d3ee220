"""Kernel options (issue 33 item 5): each one computes what the plain path computes.

A pinned SDPA backend and a fused SwiGLU change how the maths runs, never the weights or the
result: on the CPU, forward outputs and gradients match the plain model in float32.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.config import ATTENTION_BACKENDS, MicroDiTConfig
from model.io import from_pretrained, load_weights, save_pretrained
from model.layers import SDPA_BACKENDS, SwiGLU
from model.microdit import MicroDiT, build_model, count_parameters
from model.moe import ExpertChoiceMoE
from tests.model.helpers import batch, randomized

# Backends that have no CPU kernel in torch; they run on CUDA only.
CUDA_ONLY = ("efficient", "cudnn")


def _loss_and_grads(model: MicroDiT, config: MicroDiTConfig
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The raw output on a fixed batch (mask 0.5, so the masked path runs) and the gradients of
    its squared sum, by parameter name."""
    latents, text = batch(config)
    generator = torch.Generator().manual_seed(1)
    model.zero_grad()
    out = model(latents, torch.linspace(0.5, 2.0, 3), text, 0.5, generator).sample
    out.square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _pair(config: MicroDiTConfig, **kernels: object) -> tuple[MicroDiT, MicroDiT]:
    """The plain model and a model with `kernels` holding the same weights."""
    plain = randomized(build_model(config))
    other = build_model(replace(config, **kernels))
    other.load_state_dict(plain.state_dict(), strict=True)
    return plain, other


def test_every_backend_name_maps_to_a_kernel() -> None:
    assert set(SDPA_BACKENDS) | {"auto"} == set(ATTENTION_BACKENDS)
    with pytest.raises(ValueError, match="attention_backend 'fast' is not one of"):
        MicroDiTConfig(attention_backend="fast")


@pytest.mark.parametrize("backend", ["math", "flash"])
def test_pinned_backend_equals_auto_on_cpu(tiny_config: MicroDiTConfig, backend: str) -> None:
    plain, pinned = _pair(tiny_config, attention_backend=backend)
    out, grads = _loss_and_grads(plain, tiny_config)
    pinned_out, pinned_grads = _loss_and_grads(pinned, tiny_config)
    torch.testing.assert_close(pinned_out, out, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(pinned_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend", CUDA_ONLY)
def test_cuda_only_backend_on_cpu_fails_loudly(tiny_config: MicroDiTConfig, backend: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the CPU refusal is not what runs here")
    model = build_model(replace(tiny_config, attention_backend=backend))
    latents, text = batch(tiny_config)
    with pytest.raises(RuntimeError, match="No viable backend"):
        model(latents, torch.ones(3), text)


@pytest.mark.parametrize("backend", CUDA_ONLY + ("flash",))
def test_cuda_backend_equals_auto_on_cuda(tiny_config: MicroDiTConfig, backend: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    # The fused kernels take half precision on the GPU; compare against auto in bf16.
    plain, pinned = (m.to("cuda", torch.bfloat16) for m in _pair(
        tiny_config, attention_backend=backend))
    latents, text = (t.to("cuda", torch.bfloat16) for t in batch(tiny_config))
    sigma = torch.ones(3, device="cuda")
    torch.testing.assert_close(pinned(latents, sigma, text).sample,
                               plain(latents, sigma, text).sample, rtol=2e-2, atol=2e-2)


def test_fused_swiglu_equals_plain_outputs_and_gradients(tiny_config: MicroDiTConfig) -> None:
    plain, fused = _pair(tiny_config, fused_swiglu=True)
    assert count_parameters(fused) == count_parameters(plain)
    out, grads = _loss_and_grads(plain, tiny_config)
    fused_out, fused_grads = _loss_and_grads(fused, tiny_config)
    torch.testing.assert_close(fused_out, out, rtol=1e-5, atol=1e-6)
    for name, grad in fused_grads.items():
        if name.endswith("w12.weight"):
            stem = name.removesuffix("w12.weight")
            expected = torch.cat([grads[f"{stem}w1.weight"], grads[f"{stem}w2.weight"]])
        else:
            expected = grads[name]
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_swiglu_leaves_the_experts_alone(tiny_config: MicroDiTConfig) -> None:
    fused = build_model(replace(tiny_config, fused_swiglu=True))
    experts = [m for m in fused.modules() if isinstance(m, ExpertChoiceMoE)]
    swiglus = [m for m in fused.modules() if isinstance(m, SwiGLU)]
    assert experts and swiglus and all(m.fused for m in swiglus)
    # An MoE layer's w1/w2 are its expert matrices, not SwiGLU inputs: names and shapes stay.
    plain = build_model(tiny_config).state_dict()
    state = fused.state_dict()
    moe_keys = [k for k in plain if ".ffn.w1" in k and plain[k].dim() == 3]
    assert moe_keys and all(state[k].shape == plain[k].shape for k in moe_keys)


def test_one_seed_initialises_both_forms_alike(tiny_config: MicroDiTConfig) -> None:
    torch.manual_seed(0)
    plain = build_model(tiny_config)
    torch.manual_seed(0)
    fused = build_model(replace(tiny_config, fused_swiglu=True))
    restored = build_model(tiny_config)
    restored.load_state_dict(fused.state_dict(), strict=True)
    for (name, a), (_, b) in zip(plain.state_dict().items(), restored.state_dict().items()):
        assert torch.equal(a, b), name


def test_saved_folders_load_across_kernel_options(tiny_config: MicroDiTConfig,
                                                  tmp_path: Path) -> None:
    """A checkpoint saved by either SwiGLU form loads into the other, and the folder does not
    record kernel choices: the loading side makes its own."""
    plain, fused = _pair(tiny_config, fused_swiglu=True, attention_backend="math")
    save_pretrained(fused, tmp_path / "fused")
    save_pretrained(plain, tmp_path / "plain")
    assert (tmp_path / "fused" / "config.json").read_text() == \
        (tmp_path / "plain" / "config.json").read_text()

    back = from_pretrained(tmp_path / "fused")
    assert back.config == tiny_config
    into_fused = load_weights(build_model(replace(tiny_config, fused_swiglu=True)),
                              tmp_path / "plain")
    latents, text = batch(tiny_config)
    sigma = torch.ones(3)
    reference = plain(latents, sigma, text).sample
    for model in (back, into_fused, from_pretrained(tmp_path / "plain", fused_swiglu=True)):
        torch.testing.assert_close(model(latents, sigma, text).sample, reference,
                                   rtol=1e-5, atol=1e-6)
