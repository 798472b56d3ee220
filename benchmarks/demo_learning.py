"""Does the demo chain learn? The demo profile's model through the pipeline's own code: mirror
(demo size) -> download -> encode (trained demo VAE, word-level tiny text tower) -> the training
loop on S3 latent shards -> the evaluate step, whose prompt-following score
(demo/attributes.py) and FID it prints.

    make services-up
    python -m benchmarks.demo_learning --share 0.5 --seeds 0 1 2   # the demo recipe, every
        # stage at half its steps: what tests/test_demo_learns.py trains (seed 0)
    python -m benchmarks.demo_learning --steps 1800 [--mask 0.0] [--model '{"patch_size": 1}']
        # one unmasked stage of 64-image batches (the learning test until 2026-12-07)

Writes under an S3 prefix (left for inspection; --key names it, and a rerun with the same key
finds the corpus and the trained stages and only scores them) and serves the corpus from a
temporary folder. Results: docs/benchmarks.md, "Does the demo chain learn?".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from infra.mirror.corpus import DEMO_SIZE, CorpusSize, generate
from infra.mirror.server import serve_in_thread
from tasks.params import Params, load_params

TRAIN = ("cc3m", "textcaps", "journeydb", "diffusiondb")  # captioned by their sources


@contextlib.contextmanager
def served_mirror(size: CorpusSize = DEMO_SIZE, seed: int = 0) -> Iterator[str]:
    """Generate the mirror corpus in a temporary folder and serve it; MB_MIRROR_URL points at
    it inside the block (the download step's sources read it) and is restored after."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), seed=seed, size=size)
        server, thread = serve_in_thread(Path(tmp))
        previous = os.environ.get("MB_MIRROR_URL")
        os.environ["MB_MIRROR_URL"] = server.base_url
        try:
            yield server.base_url
        finally:
            if previous is None:
                os.environ.pop("MB_MIRROR_URL", None)
            else:
                os.environ["MB_MIRROR_URL"] = previous
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def corpus_params(base: Params, key: str, datasets: tuple[str, ...] = TRAIN) -> Params:
    """`base` with raw, latents and runs under s3://BUCKET/<key>/, training on `datasets` and
    encoding those and the evaluation set."""
    storage = dataclasses.replace(base.storage, raw_prefix=f"{key}/raw",
                                  latents_prefix=f"{key}/latents", runs_prefix=f"{key}/runs")
    return dataclasses.replace(
        base, storage=storage, train=dataclasses.replace(base.train, datasets=datasets),
        encode=dataclasses.replace(base.encode, datasets=(*datasets, base.evaluate.dataset)))


def build_corpus(key: str | None = None, size: CorpusSize = DEMO_SIZE,
                 datasets: tuple[str, ...] = TRAIN) -> Params:
    """The demo corpus downloaded and encoded under s3://BUCKET/<key>/{raw,latents}, for tests
    and benchmarks that train on it; returns the demo profile's params with its storage (runs
    under <key>/runs too), training on `datasets` and encoding those and COCO val (the
    evaluation set). `key` None: a fresh bench/demo-learning-<hex>. The mirror is served only
    while it downloads. Download and encode skip what is committed, so a second call with the
    same key costs seconds. Builds the demo's local models if they are missing."""
    from tasks.common.encoders import load
    from tasks.download.run import download
    from tasks.encode.run import encode_unit, encoded_datasets, finish, plan
    from tasks.models import build_local_models

    base = load_params(profile="demo")
    params = corpus_params(base, key or f"bench/demo-learning-{uuid.uuid4().hex[:8]}", datasets)
    with served_mirror(size):
        for dataset in params.encode.datasets:
            download(params, dataset)
    build_local_models(base)
    encoders = load(params.encode)
    for dataset in encoded_datasets(params):
        finish(params, dataset, [encode_unit(params, dataset, unit, encoders)
                                 for unit in plan(params, dataset)])
    return params


def demo_recipe(params: Params, share: float = 1.0, seed: int = 0) -> Params:
    """The demo's stages (masking, noise levels, learning rates, batch) with every stage
    `share` of its steps, under run seed `seed`: the demo recipe at a budget a test affords."""
    stages = tuple(dataclasses.replace(s, steps=max(1, round(s.steps * share)))
                   for s in params.train.stages)
    return dataclasses.replace(params, train=dataclasses.replace(params.train, seed=seed,
                                                                 stages=stages))


def chain_params(base: Params, steps: int, mask: float, prompts: int,
                 model: dict[str, Any] | None = None) -> Params:
    """The demo profile narrowed to one stage on the source-captioned datasets (drawn with the
    demo's dataset weights), scored on `prompts` COCO prompts with the EMA weights; `model`
    overrides fields of the demo's MicroDiT preset (e.g. {"patch_size": 1})."""
    stage = dataclasses.replace(base.train.stages[0], mask_ratio=mask, steps=steps, lr=2e-3,
                                schedule="cosine", warmup_steps=30, final_lr_ratio=0.1,
                                grad_clip=1.0, p_mean=0.0)
    train = dataclasses.replace(base.train,
                                model_overrides={**base.train.model_overrides, **(model or {})},
                                global_batch=64, micro_batch=64, ema_half_life_images=4000.0,
                                checkpoint_every_images=10 ** 9, log_every=100,
                                stages=(stage,))
    ev = dataclasses.replace(base.evaluate, num_samples=prompts, batch_size=prompts, steps=12,
                             guidance=3.0, extra_stages=())
    return dataclasses.replace(base, train=train, evaluate=ev)


def latents_depict_captions(params: Params, per_dataset: int = 60) -> dict[str, Any]:
    """Decode stored training latents with the demo autoencoder and classify them against their own
    stored captions: does encode keep each image with its caption? The share of samples whose
    decoded scene matches the caption, per attribute, over the first `per_dataset` samples of
    each training dataset. (The VAE and classifier cap shape near 85-90 % on real scenes.)"""
    import numpy as np
    import torch
    from demo.attributes import accuracy, classify, parse_prompt
    from tasks.common.autoencoder import load_autoencoder
    from tasks.common.encoders import read_vae_config, resolve
    from tasks.common.generation import decode
    from tasks.common.npy import npy_load
    from tasks.common.shards import iter_shard, read_manifest

    # The profile's autoencoder, KL or DC (demo_dcae), by the class its config names.
    enc = params.encode
    vae = load_autoencoder(resolve(enc.vae), read_vae_config(enc.vae, enc.vae_subfolder),
                           torch.float32, enc.vae_subfolder).eval()
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


def train_and_score(params: Params) -> dict[str, Any]:
    """Train (or find) every stage of params.train and score the last one with the evaluate
    step at params.evaluate; the training summary of the last stage and the scores."""
    from benchmarks.demo_seeds import train_and_score as seeds_train_and_score

    start = time.monotonic()
    row = seeds_train_and_score(params, [params.evaluate.guidance])
    scores = row["scores"][str(params.evaluate.guidance)]
    return {"seed": params.train.seed, "checkpoint": row["checkpoint"],
            "train_seconds": row["train_seconds"],
            "seconds": round(time.monotonic() - start, 1),
            "prompt_following": {k: v for k, v in scores.items() if k != "fid"},
            "fid": scores["fid"]}


def measure(steps: int, mask: float = 0.0, prompts: int = 48,
            size: CorpusSize = DEMO_SIZE, model: dict[str, Any] | None = None,
            key: str | None = None) -> dict[str, Any]:
    """One unmasked stage of `steps` 64-image batches on the corpus under `key` (None: a fresh
    one), scored on `prompts` COCO prompts at guidance 3; the result names the prefix, the
    training summary, prompt-following and FID."""
    corpus = build_corpus(key, size=size)
    params = chain_params(corpus, steps, mask, prompts, model)
    return {"prefix": corpus.storage.runs_prefix.rsplit("/", 1)[0],
            "latents_depict_captions": latents_depict_captions(params),
            **train_and_score(params)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--share", type=float, default=None,
                    help="train the demo recipe, every stage this share of its steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="run seeds (--share)")
    ap.add_argument("--key", default=None, help="S3 prefix (default: a fresh one)")
    ap.add_argument("--steps", type=int, default=1800, help="one unmasked stage (no --share)")
    ap.add_argument("--mask", type=float, default=0.0)
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--model", type=json.loads, default=None,
                    help='MicroDiT fields over the demo preset, as JSON: \'{"patch_size": 1}\'')
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads, pinned")
    ap.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    args = ap.parse_args(argv)
    from tasks.encode.tiny import torch_threads

    with torch_threads(args.threads):
        if args.share is None:
            result = {"model_overrides": args.model or {},
                      **measure(args.steps, args.mask, args.prompts, model=args.model)}
        else:
            start = time.monotonic()
            corpus = build_corpus(args.key)
            result = {"prefix": corpus.storage.runs_prefix.rsplit("/", 1)[0],
                      "share": args.share, "threads": args.threads,
                      "corpus_seconds": round(time.monotonic() - start, 1),
                      "latents_depict_captions": latents_depict_captions(corpus), "rows": []}
            for seed in args.seeds:
                result["rows"].append(train_and_score(demo_recipe(corpus, args.share, seed)))
                print(json.dumps(result["rows"][-1]), flush=True)
                if args.out:  # after every seed: a long sweep keeps what it measured
                    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
