"""Encode step parameters: which encoders over which datasets (the resolutions are the stages')."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EncodeParams:
    """VAE latents + CLIP text embeddings for each raw dataset (reference.md, "Encoders and data").

    Model ids are Hugging Face ids or local folders (relative to the repository root).
    """

    vae: str = "madebyollin/sdxl-vae-fp16-fix"  # SDXL VAE weights that stay finite in fp16
    vae_subfolder: str | None = None
    text_encoder: str = "apple/DFN5B-CLIP-ViT-H-14-378"  # ViT-H/14 text tower, 1024-d tokens
    tokenizer: str | None = None  # null: the text_encoder folder/id
    text_length: int = 77  # tokens per caption
    # "open_clip": tokenize as the reference did (open_clip's caption cleaning, pad id 0), which
    # an imported reference checkpoint was trained on; "hf": the tokenizer files as they are.
    tokenizer_compat: Literal["open_clip", "hf"] = "open_clip"
    datasets: tuple[str, ...] = ("cc3m", "sa1b", "textcaps", "journeydb", "diffusiondb", "coco")
    batch_size: int = 32  # images per VAE forward
    # Processes that decode JPEGs and resize them ahead of the encoders (0: in the encoding
    # process). Per core rates for planning a node: docs/benchmarks.md, "Encode host side".
    decode_workers: int = 0
    compile: bool = False  # torch.compile the VAE encoder (CUDA only; CPU runs it eager)
    shards_per_unit: int = 4  # raw shards per Prefect work unit (one GPU worker each)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["fp32", "bf16", "fp16"] = "bf16"  # encoder compute dtype on GPU (CPU: fp32)
    seed: int = 0  # posterior sample noise
    min_caption_chars: int = 1  # shorter captions are counted and skipped

    def __post_init__(self) -> None:
        for name in ("batch_size", "shards_per_unit", "text_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"encode.{name} must be > 0, got {getattr(self, name)}")
        if self.decode_workers < 0:
            raise ValueError(f"encode.decode_workers must be >= 0, got {self.decode_workers}")
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"encode.datasets has duplicates: {self.datasets}")
