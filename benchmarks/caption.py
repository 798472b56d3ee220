"""Caption throughput: our caption step vs plain transformers `generate`, captions/s.

On an H100 (the issue's measurement): a random-init model of the LLaVA-1.5-7B architecture
(CLIP ViT-L/14 at 336 px, Vicuna-7B decoder), 64 new tokens per caption, bf16:

    python -m benchmarks.caption --arch llava-7b --images 256 --batch 64 --static --compile

On the CPU it is a smoke test of the same code with the tiny LLaVA of the demo:

    python -m benchmarks.caption --arch tiny --images 16 --batch 8 --device cpu

Baselines: plain `generate` at batch 1 and at batch 32 (processor inline, dynamic KV cache).
Ours: `tasks.caption.llava` (preprocessing one batch ahead in a thread, left padding, optional
static KV cache and compiled decoder). Every run decodes exactly --new-tokens tokens (EOS off).
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
from tasks.caption.llava import caption_batches, load
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


def ours(captioner, pictures: list[Image.Image]) -> float:
    size = captioner.params.batch_size
    start = time.perf_counter()
    for _ in caption_batches(captioner, [pictures[i:i + size] for i in range(0, len(pictures), size)]):
        pass
    sync(captioner.device)
    return len(pictures) / (time.perf_counter() - start)


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
    ap.add_argument("--static", action="store_true", help="static KV cache")
    ap.add_argument("--compile", action="store_true", help="compile the decoder (GPU)")
    ap.add_argument("--skip-batch1", action="store_true", help="skip the slow batch-1 baseline")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = (save_llava_7b if args.arch == "llava-7b" else save_tiny_llava)(Path(tmp) / "m")
        params = CaptionParams(model=str(folder), device=args.device,
                               max_new_tokens=args.new_tokens, batch_size=args.batch,
                               cache_implementation="static" if args.static else "dynamic",
                               compile=args.compile)
        captioner = load(params)
        no_eos(captioner)
        pictures = images(args.images)
        ours(captioner, pictures[:args.batch])  # warm-up (and compilation)
        rows = {"ours": ours(captioner, pictures)}
        plain = load(dataclasses.replace(params, cache_implementation="dynamic", compile=False))
        no_eos(plain)
        plain_generate(plain, pictures[:4], 4)  # warm-up
        rows["plain generate, batch 32"] = plain_generate(plain, pictures, 32)
        if not args.skip_batch1:
            rows["plain generate, batch 1"] = plain_generate(plain, pictures[:16], 1)
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    print(json.dumps({"arch": args.arch, "device": str(captioner.device), "batch": args.batch,
                      "new_tokens": args.new_tokens, "static": args.static,
                      "compile": args.compile, "peak_gib": round(peak, 1)}))
    print("| run | captions/s |\n|---|---|")
    for name, rate in rows.items():
        print(f"| {name} | {rate:.2f} |")


if __name__ == "__main__":
    main()
