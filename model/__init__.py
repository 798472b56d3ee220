"""MicroDiT and EDM in pure torch: no I/O beyond local safetensors folders, no orchestration."""

from model.config import PRESETS, MicroDiTConfig, preset
from model.edm import EDMLoss, EDMPrecond, edm_heun_sampler, karras_sigmas, sample_noise
from model.ema import EMA
from model.io import from_pretrained, load_weights, save_pretrained
from model.microdit import DiTOutput, MicroDiT, build_model, count_parameters
from model.optim import param_groups

__all__ = [
    "EMA", "PRESETS", "DiTOutput", "EDMLoss", "EDMPrecond", "MicroDiT", "MicroDiTConfig",
    "build_model", "count_parameters", "edm_heun_sampler", "from_pretrained", "karras_sigmas",
    "load_weights", "param_groups", "preset", "sample_noise", "save_pretrained",
]
