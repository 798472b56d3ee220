"""Does the demo chain learn? One stage of the demo profile's model through the pipeline's own
code: mirror (demo size) -> download -> encode (trained demo VAE, word-level tiny text tower)
-> the training loop on S3 latent shards -> the evaluate step, whose prompt-following score
(tasks/evaluate/attributes.py) and FID it prints.

    make services-up && python -m benchmarks.demo_learning [--steps 900] [--mask 0.0]

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

from infra.mirror.corpus import DEMO_SIZE, generate
from infra.mirror.server import serve_in_thread
from tasks.params import Params, load_params

TRAIN = ("cc3m", "textcaps", "journeydb", "diffusiondb")  # captioned by their sources


def chain_params(base: Params, steps: int, mask: float, prompts: int) -> Params:
    """The demo profile narrowed to one stage on the source-captioned datasets, scored on
    `prompts` COCO prompts with the EMA weights."""
    stage = dataclasses.replace(base.train.stages[0], mask_ratio=mask, steps=steps, lr=2e-3,
                                schedule="cosine", warmup_steps=30, final_lr_ratio=0.1,
                                grad_clip=1.0)
    train = dataclasses.replace(base.train, datasets=TRAIN, dataset_weights={},
                                global_batch=64, micro_batch=64, ema_half_life_images=4000.0,
                                checkpoint_every_images=10 ** 9, log_every=100,
                                stages=(stage,))
    encode = dataclasses.replace(base.encode, datasets=(*TRAIN, "coco"))
    ev = dataclasses.replace(base.evaluate, num_samples=prompts, batch_size=prompts, steps=12,
                             guidance=3.0, extra_stages=())
    return dataclasses.replace(base, train=train, encode=encode, evaluate=ev)


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
    return {"train": {k: summary[k] for k in ("steps", "images", "final_loss", "seconds")},
            "prompt_following": result["prompt_following"], "fid": result["fid"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--mask", type=float, default=0.0)
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    args = ap.parse_args(argv)
    from tasks.models import build_local_models

    build_local_models(load_params(profile="demo"))
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), seed=0, size=DEMO_SIZE)
        server, thread = serve_in_thread(Path(tmp))
        os.environ["MB_MIRROR_URL"] = server.base_url
        try:
            base = load_params(profile="demo")
            key = f"bench/demo-learning-{uuid.uuid4().hex[:8]}"
            storage = dataclasses.replace(base.storage, raw_prefix=f"{key}/raw",
                                          latents_prefix=f"{key}/latents",
                                          runs_prefix=f"{key}/runs")
            params = chain_params(dataclasses.replace(base, storage=storage), args.steps,
                                  args.mask, args.prompts)
            result = {"prefix": key, **run_chain(params)}
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
