"""Caption throughput: where the time goes (prefill vs decode) and each engine, captions/s.

On an H100 (the issue's measurement): a random-init model of the LLaVA-1.5-7B architecture
(CLIP ViT-L/14 at 336 px, Vicuna-7B decoder), 64 new tokens per caption, bf16:

    python -m benchmarks.caption --arch llava-7b --images 256 --batch 64 --static --compile

On the CPU with the tiny LLaVA of the demo (docs/benchmarks.md, "Captioning"):

    python -m benchmarks.caption --arch tiny --images 64 --batch 8 --device cpu \
        --engines generate,static,continuous --batches 8,32 --natural-length

Baselines: plain `generate` at batch 1 and at batch 32 (processor inline, dynamic KV cache).
"ours": `tasks.caption.llava` with --engine at --batch (preprocessing one batch ahead in a
thread, left padding, optional static KV cache and compiled decoder). The prefill / decode rows
time one batch of `generate` at 1 and at --new-tokens new tokens: prefill is the first, decode
per token the difference over the remaining tokens. Without --natural-length every caption
decodes exactly --new-tokens tokens (EOS off); with it, captions end at EOS as in the caption
step, which is where continuous batching differs from generate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tasks.caption.config import CaptionParams
from tasks.caption.llava import caption_images, load
from tasks.caption.tiny import save_tiny_llava, tiny_tokenizer


def save_llava_7b(path: Path) -> Path:
    """Random-init weights with llava-1.5-7b-hf's configuration and a stand-in tokenizer."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tokenizer = tiny_tokenizer()
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                              num_attention_heads=16, image_size=336, patch_size=14,
                              projection_dim=768)
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                       pad_token_id=3)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         image_seq_length=576)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlavaForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(path)
    LlavaProcessor(image_processor=CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
        num_additional_image_tokens=1).save_pretrained(path)
    return path


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(n)]


def no_eos(captioner) -> None:
    # Random weights would stop at arbitrary lengths; every caption gets exactly max_new_tokens.
    captioner.model.generation_config.eos_token_id = None


def plain_generate(captioner, pictures: list[Image.Image], batch: int) -> float:
    """captions/s of a straightforward loop: processor, then generate, one batch at a time."""
    params, proc = captioner.params, captioner.processor
    start = time.perf_counter()
    for i in range(0, len(pictures), batch):
        chunk = pictures[i:i + batch]
        inputs = proc(images=chunk, text=[params.prompt] * len(chunk), return_tensors="pt",
                      padding=True).to(captioner.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(captioner.dtype)
        captioner.model.generate(**inputs, max_new_tokens=params.max_new_tokens, do_sample=False,
                                 pad_token_id=proc.tokenizer.pad_token_id)
    sync(captioner.device)
    return len(pictures) / (time.perf_counter() - start)


CPU_RATES: dict[str, float] = {}  # captions per CPU-second of this process, by run


def ours(captioner, pictures: list[Image.Image], name: str = "") -> float:
    """captions/s; also captions per CPU-second (all threads) under `name`, which a shared,
    busy host changes less than the wall-clock rate."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in caption_images(captioner, pictures):
        pass
    sync(captioner.device)
    if name:
        CPU_RATES[name] = round(len(pictures) / (time.process_time() - cpu), 2)
    return len(pictures) / (time.perf_counter() - start)


def prefill_decode(captioner, pictures: list[Image.Image], batch: int,
                   new_tokens: int) -> dict[str, float]:
    """Seconds of one batch's prefill and of one decode step (EOS off), from two timed runs."""
    proc = captioner.processor
    inputs = proc(images=pictures[:batch], text=[captioner.params.prompt] * batch,
                  return_tensors="pt", padding=True).to(captioner.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(captioner.dtype)
    eos = captioner.model.generation_config.eos_token_id
    captioner.model.generation_config.eos_token_id = None
    times = {}
    for n in (1, new_tokens, 1, new_tokens):  # the first pair warms up
        start = time.perf_counter()
        captioner.model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=proc.tokenizer.pad_token_id)
        sync(captioner.device)
        times[n] = time.perf_counter() - start
    captioner.model.generation_config.eos_token_id = eos
    decode = (times[new_tokens] - times[1]) / (new_tokens - 1)
    return {"prefill_s": times[1], "decode_step_s": decode,
            "prefill_share": times[1] / (times[1] + decode * (new_tokens - 1))}


ENGINES = {"generate": {"engine": "generate"},
           "static": {"engine": "generate", "cache_implementation": "static"},
           "continuous": {"engine": "continuous"}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=("llava-7b", "tiny"), default="llava-7b")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--engine", choices=tuple(ENGINES), default="generate",
                    help="the engine of the 'ours' row")
    ap.add_argument("--engines", default="", help="comma list of ENGINES also timed per --batches")
    ap.add_argument("--batches", default="", help="comma list of batch sizes for --engines")
    ap.add_argument("--natural-length", action="store_true",
                    help="captions end at EOS (default: exactly --new-tokens each)")
    ap.add_argument("--static", action="store_true", help="static KV cache")
    ap.add_argument("--compile", action="store_true", help="compile the decoder (GPU)")
    ap.add_argument("--skip-batch1", action="store_true", help="skip the slow batch-1 baseline")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = (save_llava_7b if args.arch == "llava-7b" else save_tiny_llava)(Path(tmp) / "m")
        params = CaptionParams(model=str(folder), device=args.device,
                               max_new_tokens=args.new_tokens, batch_size=args.batch,
                               engine=ENGINES[args.engine]["engine"],
                               cache_implementation="static" if args.static else "dynamic",
                               compile=args.compile)
        pictures = images(args.images)

        def loaded(p: CaptionParams):
            captioner = load(p)
            if not args.natural_length:
                no_eos(captioner)
            return captioner

        captioner = loaded(params)
        ours(captioner, pictures[:args.batch])  # warm-up (and compilation)
        rows = {"ours": ours(captioner, pictures, "ours")}
        plain = loaded(dataclasses.replace(params, engine="generate",
                                           cache_implementation="dynamic", compile=False))
        split = prefill_decode(plain, pictures, args.batch, args.new_tokens)
        plain_generate(plain, pictures[:4], 4)  # warm-up
        rows["plain generate, batch 32"] = plain_generate(plain, pictures, 32)
        if not args.skip_batch1:
            rows["plain generate, batch 1"] = plain_generate(plain, pictures[:16], 1)
        for name in filter(None, args.engines.split(",")):
            for batch in map(int, filter(None, args.batches.split(","))):
                other = loaded(dataclasses.replace(params, batch_size=batch, compile=False,
                                                   **{"cache_implementation": "dynamic",
                                                      **ENGINES[name]}))
                ours(other, pictures[:batch])  # warm-up
                row = f"engine {name}, batch {batch}"
                rows[row] = ours(other, pictures, row)
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    print(json.dumps({"arch": args.arch, "device": str(captioner.device), "batch": args.batch,
                      "engine": args.engine, "new_tokens": args.new_tokens,
                      "natural_length": args.natural_length, "static": args.static,
                      "compile": args.compile, "peak_gib": round(peak, 1),
                      "threads": torch.get_num_threads(), "captions_per_cpu_s": CPU_RATES,
                      **{k: round(v, 4) for k, v in split.items()}}))
    print("| run | captions/s |\n|---|---|")
    for name, rate in rows.items():
        print(f"| {name} | {rate:.2f} |")


if __name__ == "__main__":
    main()
