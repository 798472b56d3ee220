"""Does the demo chain learn? One stage of the demo profile's model through the pipeline's own
code: mirror (demo size) -> download -> encode (trained demo VAE, word-level tiny text tower)
-> the training loop on S3 latent shards -> the evaluate step, whose prompt-following score
(tasks/evaluate/attributes.py) and FID it prints.

    make services-up && python -m benchmarks.demo_learning [--steps 1800] [--mask 0.0] \
        [--model '{"patch_size": 1}']

Writes under a fresh S3 prefix (left for inspection) and serves the corpus from a temporary
folder. On the shared 2-core machine it takes 15-25 minutes. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from infra.mirror.corpus import DEMO_SIZE, CorpusSize, generate
from infra.mirror.server import serve_in_thread
from tasks.params import Params, load_params

TRAIN = ("cc3m", "textcaps", "journeydb", "diffusiondb")  # captioned by their sources


def chain_params(base: Params, steps: int, mask: float, prompts: int,
                 model: dict[str, Any] | None = None) -> Params:
    """The demo profile narrowed to one stage on the source-captioned datasets (drawn with the
    demo's dataset weights), scored on `prompts` COCO prompts with the EMA weights; `model`
    overrides fields of the demo's MicroDiT preset (e.g. {"patch_size": 1})."""
    stage = dataclasses.replace(base.train.stages[0], mask_ratio=mask, steps=steps, lr=2e-3,
                                schedule="cosine", warmup_steps=30, final_lr_ratio=0.1,
                                grad_clip=1.0)
    train = dataclasses.replace(base.train, datasets=TRAIN,
                                model_overrides={**base.train.model_overrides, **(model or {})},
                                global_batch=64, micro_batch=64, ema_half_life_images=4000.0,
                                checkpoint_every_images=10 ** 9, log_every=100,
                                stages=(stage,))
    encode = dataclasses.replace(base.encode, datasets=(*TRAIN, "coco"))
    ev = dataclasses.replace(base.evaluate, num_samples=prompts, batch_size=prompts, steps=12,
                             guidance=3.0, extra_stages=())
    return dataclasses.replace(base, train=train, encode=encode, evaluate=ev)


def latents_depict_captions(params: Params, per_dataset: int = 60) -> dict[str, Any]:
    """Decode stored training latents with the demo VAE and classify them against their own
    stored captions: does encode keep each image with its caption? The share of samples whose
    decoded scene matches the caption, per attribute, over the first `per_dataset` samples of
    each training dataset. (The VAE and classifier cap shape near 85-90 % on real scenes.)"""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL

    from tasks.common.shards import iter_shard, read_manifest
    from tasks.encode.preprocess import npy_load
    from tasks.evaluate.attributes import accuracy, classify, parse_prompt
    from tasks.evaluate.generate import decode

    vae = AutoencoderKL.from_pretrained(params.encode.vae).eval()
    field = f"lat{params.train.stages[0].resolution}.npy"
    pairs = []
    for dataset in params.train.datasets:
        manifest = read_manifest(params.storage.uri(params.storage.latents_prefix, dataset))
        taken = 0
        for shard in manifest.shards if manifest else []:
            for _, sample in iter_shard(shard.uri):
                want = parse_prompt(sample["txt"].decode("utf-8"))
                if want is None or taken >= per_dataset:
                    continue
                latents = torch.from_numpy(npy_load(sample[field]).astype(np.float32))[None]
                with torch.no_grad():
                    image = decode(vae, latents)[0].numpy()
                pairs.append((want, classify(image)))
                taken += 1
    return accuracy(pairs)


def run_chain(params: Params) -> dict[str, Any]:
    """Download, encode, train the stage and evaluate its final checkpoint."""
    from tasks.download.run import download
    from tasks.encode.encoders import load
    from tasks.encode.run import encode_unit, encoded_datasets, finish, plan
    from tasks.evaluate.encoders import load_encoders
    from tasks.evaluate.score import evaluate
    from tasks.train.loop import train

    for dataset in (*TRAIN, "coco"):
        download(params, dataset)
    encoders = load(params.encode)
    for dataset in encoded_datasets(params):
        finish(params, dataset, [encode_unit(params, dataset, unit, encoders)
                                 for unit in plan(params, dataset)])
    summary = train(params, params.train.stages[0].name)
    ev = dataclasses.replace(params.evaluate, checkpoint=summary["checkpoint"])
    result = evaluate(dataclasses.replace(params, evaluate=ev), summary["checkpoint"],
                      load_encoders).result
    return {"latents_depict_captions": latents_depict_captions(params),
            "train": {k: summary[k] for k in ("steps", "images", "final_loss", "seconds")},
            "prompt_following": result["prompt_following"], "fid": result["fid"]}


def measure(steps: int, mask: float = 0.0, prompts: int = 48,
            size: CorpusSize = DEMO_SIZE, model: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate and serve the corpus, then run the chain under a fresh S3 prefix; the result
    names the prefix, the training summary, prompt-following and FID."""
    from tasks.models import build_local_models

    build_local_models(load_params(profile="demo"))
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), seed=0, size=size)
        server, thread = serve_in_thread(Path(tmp))
        previous = os.environ.get("MB_MIRROR_URL")
        os.environ["MB_MIRROR_URL"] = server.base_url
        try:
            base = load_params(profile="demo")
            key = f"bench/demo-learning-{uuid.uuid4().hex[:8]}"
            storage = dataclasses.replace(base.storage, raw_prefix=f"{key}/raw",
                                          latents_prefix=f"{key}/latents",
                                          runs_prefix=f"{key}/runs")
            params = chain_params(dataclasses.replace(base, storage=storage), steps, mask,
                                  prompts, model)
            return {"prefix": key, **run_chain(params)}
        finally:
            if previous is None:
                os.environ.pop("MB_MIRROR_URL", None)
            else:
                os.environ["MB_MIRROR_URL"] = previous
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--mask", type=float, default=0.0)
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--model", type=json.loads, default=None,
                    help='MicroDiT fields over the demo preset, as JSON: \'{"patch_size": 1}\'')
    ap.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    args = ap.parse_args(argv)
    result = {"model_overrides": args.model or {},
              **measure(args.steps, args.mask, args.prompts, model=args.model)}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
