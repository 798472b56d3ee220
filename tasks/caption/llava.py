"""LLaVA captioning: from_pretrained, batched left-padded generation, preprocessing prefetched.

The processor (resize, normalise, tokenise) runs in a background thread one batch ahead, so the
accelerator only waits on the model. Greedy decoding by default; a retry samples. Two engines
(caption.engine): `generate`, transformers' generate one batch at a time (a batch lasts as long
as its longest caption), and `continuous`, where a finished caption's row takes the next image
(tasks/caption/continuous.py). Both give the same greedy captions.
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
from tasks.common.device import pick_device
from tasks.common.encoders import resolve

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


def prepared(captioner: Captioner, batches: Iterable[list[Image.Image]]
             ) -> Iterator[dict[str, torch.Tensor]]:
    """Processor inputs per batch; batch i+1 is preprocessed while batch i is consumed."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="caption-prep") as pool:
        pending = None
        for images in batches:
            future = pool.submit(prepare, captioner, images)
            if pending is not None:
                yield pending.result()
            pending = future
        if pending is not None:
            yield pending.result()


def caption_batches(captioner: Captioner, batches: Iterable[list[Image.Image]]
                    ) -> Iterator[list[str]]:
    """Greedy captions per batch with `generate`, whatever caption.engine says."""
    for inputs in prepared(captioner, batches):
        yield generate(captioner, inputs)


def continuous(captioner: Captioner, batches: Iterable[list[Image.Image]]) -> Iterator[str]:
    """Greedy captions in input order, decoded with continuous batching over batch_size rows."""
    from tasks.caption.continuous import ContinuousDecoder, prompts_of

    params, tokenizer = captioner.params, captioner.processor.tokenizer
    eos = captioner.model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    decoder = ContinuousDecoder(captioner.model, params.batch_size, params.max_new_tokens,
                                eos_ids, tokenizer.pad_token_id, captioner.device,
                                captioner.dtype)
    done: dict[int, list[int]] = {}
    next_out = 0
    for index, tokens in decoder.run(prompts_of(prepared(captioner, batches))):
        done[index] = tokens
        while next_out in done:
            yield tokenizer.decode(done.pop(next_out), skip_special_tokens=True)
            next_out += 1


def caption_images(captioner: Captioner, images: list[Image.Image]) -> Iterator[str]:
    """Greedy captions of `images` in order, with the engine caption.engine names."""
    size = captioner.params.batch_size
    batches = [images[i:i + size] for i in range(0, len(images), size)]
    if captioner.params.engine == "continuous":
        yield from continuous(captioner, batches)
    else:
        for texts in caption_batches(captioner, batches):
            yield from texts


_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _cached(params: CaptionParams) -> Captioner:
    return load(params)


def shared(params: CaptionParams) -> Captioner:
    """One loaded model per worker process, shared by the shard tasks it runs."""
    with _LOCK:
        return _cached(params)
