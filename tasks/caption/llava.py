"""LLaVA captioning: from_pretrained, batched left-padded generation, preprocessing prefetched.

The processor (resize, normalise, tokenise) runs in a background thread one batch ahead, so the
accelerator only waits on generate. Greedy decoding by default; a retry samples.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from PIL import Image

from tasks.caption.config import CaptionParams
from tasks.encode.encoders import pick_device, resolve

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Captioner:
    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype
    params: CaptionParams


def compute_dtype(params: CaptionParams, device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32  # bf16 matmuls are slow on CPU and gain nothing there
    return torch.bfloat16 if params.dtype == "auto" else DTYPES[params.dtype]


def load(params: CaptionParams) -> Captioner:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    device = pick_device(params.device)
    dtype = compute_dtype(params, device)
    model = LlavaForConditionalGeneration.from_pretrained(resolve(params.model), dtype=dtype)
    model = model.to(device).eval()
    processor = AutoProcessor.from_pretrained(resolve(params.model))
    processor.tokenizer.padding_side = "left"  # decoder-only: new tokens follow every prompt
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    if params.compile and device.type == "cuda":
        model.forward = torch.compile(model.forward, mode="reduce-overhead", dynamic=False)
    return Captioner(model, processor, device, dtype, params)


def prepare(captioner: Captioner, images: list[Image.Image]) -> dict[str, torch.Tensor]:
    """Processor inputs for one batch: pixel values and left-padded prompt tokens."""
    prompts = [captioner.params.prompt] * len(images)
    return captioner.processor(images=[im.convert("RGB") for im in images], text=prompts,
                               return_tensors="pt", padding=True)


@torch.inference_mode()
def generate(captioner: Captioner, inputs: dict[str, torch.Tensor], sample: bool = False,
             seed: int = 0) -> list[str]:
    """Decoded new tokens for one prepared batch (the prompt is cut off by position)."""
    params = captioner.params
    inputs = {k: v.to(captioner.device) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(captioner.dtype)
    kwargs: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "do_sample": sample}
    if sample:
        torch.manual_seed(seed)
        kwargs.update(temperature=params.retry_temperature, top_p=0.9)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if params.cache_implementation == "static":
        kwargs["cache_implementation"] = "static"
    pad = captioner.processor.tokenizer.pad_token_id
    out = captioner.model.generate(**inputs, pad_token_id=pad, **kwargs)
    new = out[:, inputs["input_ids"].shape[1]:]
    return captioner.processor.batch_decode(new, skip_special_tokens=True)


def caption_batches(captioner: Captioner, batches: Iterable[list[Image.Image]]
                    ) -> Iterator[list[str]]:
    """Greedy captions per batch; batch i+1 is preprocessed while batch i generates."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="caption-prep") as pool:
        pending = None
        for images in batches:
            future = pool.submit(prepare, captioner, images)
            if pending is not None:
                yield generate(captioner, pending.result())
            pending = future
        if pending is not None:
            yield generate(captioner, pending.result())


_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _cached(params: CaptionParams) -> Captioner:
    return load(params)


def shared(params: CaptionParams) -> Captioner:
    """One loaded model per worker process, shared by the shard tasks it runs."""
    with _LOCK:
        return _cached(params)
