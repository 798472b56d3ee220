"""End to end on CPU: tiny checkpoint + tiny VAE/CLIP text tower + COCO-format shards in S3.

Covers the real loading code (from_pretrained on folders saved here), the S3 caches (real
statistics, prompts, generated batches), resumption after a lost batch, and the MLflow record.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from infra import s3
from infra.config import build
from model.config import preset
from model.io import save_pretrained
from model.microdit import build_model
from tasks.common.shards import LocalShard, commit_shard, done_records, write_manifest
from tasks.evaluate.encoders import load_encoders_from
from tasks.evaluate.generate import check_compatible, fetch_checkpoint, load_ema_model
from tasks.evaluate.score import evaluate
from tasks.evaluate.tracking import log_result, metric_names, result_markdown, start_run
from tasks.params import Params

NUM_REAL = 10
NUM_SAMPLES = 8
BATCH = 4


def byte_level_vocab() -> dict[str, int]:
    """A CLIP BPE vocabulary with no merges: every byte as a token, plus the specials."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    chars = [chr(b if b in printable else next(extra)) for b in range(256)]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def save_tiny_encoders(folder: Path, caption_dim: int) -> dict[str, str]:
    """Random-init AutoencoderKL (2x downscale) and CLIP text tower + tokenizer, saved."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                        norm_num_groups=4, sample_size=16,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    vae.save_pretrained(folder / "vae")
    tokenizer = CLIPTokenizer(vocab=byte_level_vocab(), merges=[])
    tokenizer.save_pretrained(folder / "text")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=caption_dim,
                                        intermediate_size=2 * caption_dim, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=77,
                                        eos_token_id=len(tokenizer) - 1))
    text.save_pretrained(folder / "text")
    return {"vae": str(folder / "vae"), "text": str(folder / "text")}


def save_tiny_clip(folder: Path, text_folder: str) -> str:
    """Random-init CLIPModel + CLIPProcessor (32 px images) for CLIP score, saved."""
    from transformers import (AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel,
                              CLIPProcessor)

    tokenizer = AutoTokenizer.from_pretrained(text_folder)
    text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 77,
            "eos_token_id": len(tokenizer) - 1}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision,
                         projection_dim=16)).save_pretrained(folder / "clip")
    images = CLIPImageProcessor(size={"shortest_edge": 32},
                                crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder / "clip")
    return str(folder / "clip")


def jpeg(seed: int) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 4, 4, generator=generator)
    pixels = torch.nn.functional.interpolate(low, size=(30, 40), mode="bilinear")[0] * 255
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).round().byte().numpy()).save(buffer, "JPEG")
    return buffer.getvalue()


def write_coco_shards(prefix: str, tmp: Path) -> None:
    """Two raw shards in the download contract, plus one corrupt image that must be skipped."""
    index = 0
    for shard_no, count in enumerate((NUM_REAL // 2, NUM_REAL // 2)):
        with LocalShard(tmp) as shard:
            for _ in range(count):
                captions = [f"a photo number {index}", f"picture {index} of colours"]
                shard.write(f"coco-{index}", {"jpg": jpeg(index), "txt": captions[0],
                                              "json": {"id": index, "captions": captions}})
                index += 1
            if shard_no == 1:
                shard.write("coco-broken", {"jpg": b"not a jpeg", "txt": "broken",
                                            "json": {"captions": ["broken"]}})
        commit_shard(shard.path, prefix, f"shard-{shard_no:05d}", shard.samples)
    write_manifest("coco", prefix)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, s3_service):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("evaluate")
    root = f"test/{uuid.uuid4().hex[:12]}"
    params = build(Params, {
        "profile": "demo",
        "storage": {"bucket": "micro-budget", "raw_prefix": f"{root}/raw",
                    "runs_prefix": f"{root}/runs"},
        "evaluate": {"num_samples": NUM_SAMPLES, "resolution": 16, "steps": 2,
                     "guidance": 2.0, "batch_size": BATCH, "feature_batch_size": 8,
                     "grid_images": 4, "device": "cpu"},
    }, "test")
    write_coco_shards(params.storage.uri(params.storage.raw_prefix, "coco"), tmp)
    config = preset("tiny")
    encoders = save_tiny_encoders(tmp, config.caption_dim)
    torch.manual_seed(0)
    save_pretrained(build_model(config), tmp / "ckpt" / "ema")

    def loader(_params, device):
        return load_encoders_from(encoders["vae"], encoders["text"], encoders["text"], device)

    return params, str(tmp / "ckpt"), loader


@pytest.fixture(scope="module")
def first(setup):
    params, checkpoint, loader = setup
    return evaluate(params, checkpoint, loader)


def test_evaluates_a_checkpoint_end_to_end(first):
    result = first.result
    assert result["fid"] > 0 and result["clip_score"] is None
    assert result["batches_generated"] == NUM_SAMPLES // BATCH
    assert result["real_skipped"]["corrupt_image"] == 1
    protocol = result["protocol"]
    assert protocol["num_samples"] == NUM_SAMPLES and protocol["num_real"] == NUM_REAL
    assert protocol["weights"] == "ema" and protocol["steps"] == 2
    assert protocol["feature_network"].startswith("default_1.pt:sha256:")
    grid = Image.open(io.BytesIO(first.grid_png))
    assert grid.size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)  # 4 samples of 16 px, 2x2
    assert s3.exists(result["real_stats"])
    assert result["generation"]["checkpoint"] == result["checkpoint_digest"]


def test_rerun_reuses_caches_and_regenerates_only_a_lost_batch(setup, first):
    params, checkpoint, loader = setup
    # Lose the second batch as a crash before its commit would: no record, no shard.
    samples_prefix = first.result["samples"].rsplit("/", 1)[0]
    record = done_records(samples_prefix)["batch-000001"]
    s3.delete(s3.join(samples_prefix, "_done", "batch-000001.json"))
    s3.delete(record.uri)
    resumed = evaluate(params, checkpoint, loader).result
    assert resumed["batches_generated"] == 1  # the committed batch is reused
    # Per-sample seeds: the regenerated batch is the same images, so the same FID.
    assert resumed["fid"] == pytest.approx(first.result["fid"], rel=1e-6)


def test_mismatched_resolution_fails_early_with_the_fix(setup):
    params, checkpoint, loader = setup
    encoders = loader(params, torch.device("cpu"))
    precond = load_ema_model(fetch_checkpoint(checkpoint, Path(checkpoint)), torch.device("cpu"))
    check_compatible(precond, encoders.vae, encoders.encode_text, 16)
    with pytest.raises(ValueError, match="set evaluate.resolution to 16"):
        check_compatible(precond, encoders.vae, encoders.encode_text, 32)


def test_clip_score_when_a_clip_model_is_configured(setup, first, tmp_path):
    params, checkpoint, loader = setup
    clip = save_tiny_clip(tmp_path, str(Path(checkpoint).parent / "text"))
    with_clip = replace(params, evaluate=replace(params.evaluate, clip_model=clip))
    result = evaluate(with_clip, checkpoint, loader).result
    assert result["batches_generated"] == 0  # CLIP score reuses the cached samples
    assert 0.0 <= result["clip_score"] <= 100.0
    assert result["protocol"]["clip_model"] == clip
    assert result["fid"] == pytest.approx(first.result["fid"], rel=1e-6)


def test_results_go_to_mlflow(mlflow_service, first):
    from mlflow.tracking import MlflowClient

    run_id = start_run("evaluate-test")
    log_result(run_id, first.result, first.grid_png)
    client = MlflowClient(tracking_uri=mlflow_service)
    run = client.get_run(run_id)
    name = metric_names(first.result)["fid"]
    assert name == f"eval/fid_n{NUM_SAMPLES}_16px"
    assert run.data.metrics[name] == pytest.approx(first.result["fid"])
    assert run.data.tags["eval.num_samples"] == str(NUM_SAMPLES)
    folder = f"eval/{first.result['protocol_hash']}"
    names = {Path(a.path).name for a in client.list_artifacts(run_id, folder)}
    assert names == {"result.json", "samples_grid.png"}
    assert f"FID ({NUM_SAMPLES} samples, 16 px)" in result_markdown(first.result)
