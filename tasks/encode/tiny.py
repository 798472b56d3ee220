"""Tiny random-init encoders saved in Hugging Face format, for tests and the demo profile.

They exercise the real loading code (`from_pretrained`) with no download. The tokenizer is a
byte-level CLIP BPE, so any caption tokenizes offline, with merges that make each word of the
demo captions one token (`demo_words`), as a BPE trained on them would: a random-init tower
reading one byte per token hides which word it saw, and the demo model then cannot learn
shape and position from the text in a CPU-sized run.
The demo autoencoders are the models here that are trained (`train_demo_vae`, an AutoencoderKL,
and `train_demo_dcae`, an AutoencoderDC for the demo_dcae profile): on images drawn like the demo
mirror's, on CPU in a minute or two, and cached by a hash of their recipe.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
from diffusers import AutoencoderDC, AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY_TEXT_DIM = 64  # demo caption token width (the full recipe: 1024)


def _byte_unicode_table() -> list[str]:
    """CLIP's reversible byte -> printable character table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = dict.fromkeys(printable), 0
    for byte in range(256):
        if byte not in chars:
            chars[byte] = None
    table = []
    for byte in chars:
        if byte in printable:
            table.append(chr(byte))
        else:
            table.append(chr(256 + extra))
            extra += 1
    return table


TEXT_VERSION = 2  # 2: whole-word merges for the demo vocabulary (1: bytes only)
BOS, EOS = 512, 513  # ids after the 2 x 256 byte tokens; merged words follow from 514


def demo_words() -> list[str]:
    """Every word of the demo captions: the caption templates and the attribute vocabulary."""
    from demo.attributes import BACKGROUNDS, COLORS, POSITIONS, SHAPES
    from infra.mirror.corpus import STYLES

    text = " ".join([*(t for templates in STYLES.values() for t in templates), *SHAPES,
                     *COLORS, *BACKGROUNDS, *POSITIONS])
    return sorted(set(re.findall(r"[a-z]+", text.replace("{", " {").lower())) - {
        "c", "s", "p", "b"})  # the template fields themselves


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one word: merge the best-ranked adjacent pair until none is known."""
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get(pair, math.inf), i) for i, pair in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == math.inf:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merges, in rank order, after which each word (length >= 2) is one token. A new merge
    ranks last, so it only joins what earlier merges left; repeat until every word is whole."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    changed = True
    while changed:
        changed = False
        for word in words:
            parts = _bpe(word, ranks)
            while len(parts) > 1:
                ranks[(parts[0], parts[1])] = len(merges)
                merges.append((parts[0], parts[1]))
                parts, changed = _bpe(word, ranks), True
    return merges


def save_tiny_tokenizer(path: Path | str, max_length: int = 77) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    chars = _byte_unicode_table()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({f"{c}</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = BOS
    vocab["<|endoftext|>"] = EOS
    merges = word_merges([w for w in demo_words() if len(w) > 1])
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"),
                              model_max_length=max_length)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_text_encoder(path: Path | str, hidden: int = TINY_TEXT_DIM, seed: int = 0) -> Path:
    """A 2-layer CLIP text tower of width `hidden` plus its tokenizer, in one folder."""
    path = save_tiny_tokenizer(path)
    torch.manual_seed(seed)
    vocab_size = len(json.loads((path / "vocab.json").read_text()))
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden,
                            intermediate_size=hidden * 2, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, bos_token_id=BOS,
                            eos_token_id=EOS, pad_token_id=EOS)
    CLIPTextModel(config).save_pretrained(path)
    (path / TEXT_VERSION_FILE).write_text(json.dumps({"version": TEXT_VERSION}))
    return path


TEXT_VERSION_FILE = "tiny_text_version.json"


def text_encoder_current(path: Path | str) -> bool:
    """Whether a saved tiny text tower is this module's TEXT_VERSION."""
    record = Path(path) / TEXT_VERSION_FILE
    return record.is_file() and json.loads(record.read_text()).get("version") == TEXT_VERSION


def save_tiny_vae(path: Path | str, seed: int = 0) -> Path:
    """A 4-channel AutoencoderKL that downsamples by 4 (two blocks), SDXL's scaling factor."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
        scaling_factor=0.13025,
    )
    vae.save_pretrained(path)
    return Path(path)


def tiny_dcae(channels: tuple[int, ...] = (8, 16, 16, 32), latent_channels: int = 16,
              scaling_factor: float = 1.0) -> AutoencoderDC:
    """A random-init AutoencoderDC: one block per width, each after the first downsampling by
    2 (four blocks: 8x, twice the tiny VAE's 4x), ResBlocks then one EfficientViT block, as
    the published f32c32 models mix them."""
    blocks = len(channels)
    types = ("ResBlock",) * (blocks - 1) + ("EfficientViTBlock",)
    scales = ((),) * (blocks - 1) + ((5,),)
    return AutoencoderDC(
        in_channels=3, latent_channels=latent_channels, attention_head_dim=8,
        encoder_block_types=types, decoder_block_types=types,
        encoder_block_out_channels=channels, decoder_block_out_channels=channels,
        encoder_layers_per_block=(1,) * blocks, decoder_layers_per_block=(1,) * blocks,
        encoder_qkv_multiscales=scales, decoder_qkv_multiscales=scales,
        scaling_factor=scaling_factor)


def save_tiny_dcae(path: Path | str, seed: int = 0) -> Path:
    """A 16-channel AutoencoderDC that downsamples by 8, random-init, for tests."""
    torch.manual_seed(seed)
    tiny_dcae(scaling_factor=0.5).save_pretrained(path)
    return Path(path)


RECIPE_FILE = "recipe.json"  # next to config.json: the recipe, its hash and the held-out PSNR


@dataclass(frozen=True)
class VAERecipe:
    """How the demo VAE is trained. Every field is in the cache hash."""

    seed: int = 0
    images: int = 1024  # generated training images (64 px after the encode step's crop)
    held_out: int = 64  # images from another seed, for the PSNR
    resolution: int = 64  # px, the demo's encode resolution
    crop: int = 32  # px: training crops (4x cheaper than whole images; the net is convolutional)
    steps: int = 1800  # ~2 min on 2 idle cores (1,200 gave 24.95 dB)
    batch: int = 32
    lr: float = 2e-3  # Adam, cosine to 10 %
    kl_weight: float = 1e-7  # per latent element, beside a per-pixel MSE
    channels: tuple[int, ...] = (8, 16, 16)  # three blocks: downsample by 4
    # Intra-op threads while training. CPU kernels sum in a thread-dependent order, so the same
    # seed gave different VAEs at 1 thread (inside pytest, where tests/model pins 1) and at 2,
    # and the 1-thread one turned green shapes on white blue (a CI failure that PSNR missed).
    threads: int = 2

    def key(self) -> str:
        from infra.mirror.corpus import VERSION  # the images' look is part of the recipe

        text = json.dumps({**asdict(self), "corpus": VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def demo_images(count: int, seed: int, resolution: int) -> torch.Tensor:
    """(count, 3, R, R) in [-1, 1]: mirror scenes at native sizes through the encode crop,
    a quarter of them held-out pairs (the VAE must decode what COCO val asks for too)."""
    from infra.mirror.corpus import image_size, make_image, scene
    from tasks.common.images import center_crop_resize, to_tensor

    rng = random.Random(f"demo-vae-{seed}")
    return torch.stack([to_tensor(center_crop_resize(
        make_image(rng, image_size(rng, small_share=0.0), scene(rng, held_out_share=0.25)),
        resolution)) for _ in range(count)])


def psnr(vae: AutoencoderKL, images: torch.Tensor, seed: int = 0) -> float:
    """Reconstruction PSNR in dB (peak 2: the [-1, 1] range) through one posterior sample, as
    the encode step stores latents."""
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        latents = posterior.sample(generator=torch.Generator().manual_seed(seed))
        decoded = vae.decode(latents).sample.clamp(-1, 1)
    mse = float(((decoded - images) / 2).pow(2).mean())
    return 10 * math.log10(1 / mse)


def recipe_matches(path: Path | str, recipe: VAERecipe | DCAERecipe = VAERecipe()) -> bool:
    record = Path(path) / RECIPE_FILE
    return record.is_file() and json.loads(record.read_text()).get("key") == recipe.key()


def train_demo_vae(path: Path | str, recipe: VAERecipe = VAERecipe()) -> Path:
    """Train the demo AutoencoderKL and save it in HF format with its recipe and held-out PSNR.

    Training: random crops, a per-pixel MSE on one posterior sample plus kl_weight x KL. The
    scaling factor is then set to 1 / std of the training latents, as Stable Diffusion chose
    its 0.18215, so the DiT sees latents of about unit variance (EDM's sigma_data 0.9)."""
    with torch_threads(recipe.threads):
        return _train_demo_vae(Path(path), recipe)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` intra-op threads, then give the caller's count back. CPU
    kernels sum in a thread-dependent order: a fixed count makes a seeded run repeat."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_demo_vae(path: Path, recipe: VAERecipe) -> Path:
    torch.manual_seed(recipe.seed)
    train = demo_images(recipe.images, recipe.seed, recipe.resolution)
    held_out = demo_images(recipe.held_out, recipe.seed + 1, recipe.resolution)
    blocks = len(recipe.channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=recipe.resolution,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=recipe.channels,
        layers_per_block=1, norm_num_groups=4, mid_block_add_attention=False)
    opt = torch.optim.Adam(vae.parameters(), lr=recipe.lr)
    gen = torch.Generator().manual_seed(recipe.seed)
    for step in range(recipe.steps):
        for group in opt.param_groups:
            group["lr"] = recipe.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * step / recipe.steps)))
        x = train[torch.randint(0, len(train), (recipe.batch,), generator=gen)]
        top, left = torch.randint(0, recipe.resolution - recipe.crop + 1, (2,),
                                  generator=gen).tolist()
        x = x[:, :, top:top + recipe.crop, left:left + recipe.crop]  # (B, 3, crop, crop)
        posterior = vae.encode(x).latent_dist
        decoded = vae.decode(posterior.sample(generator=gen)).sample
        loss = (decoded - x).pow(2).mean() + recipe.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    vae.eval()
    with torch.no_grad():
        std = float(torch.cat([vae.encode(train[i:i + 256]).latent_dist.mean
                               for i in range(0, len(train), 256)]).std())
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    vae.save_pretrained(path)
    quality = psnr(vae, held_out)
    (path / RECIPE_FILE).write_text(json.dumps(
        {"key": recipe.key(), "recipe": asdict(recipe), "held_out_psnr_db": round(quality, 2),
         "scaling_factor": vae.config.scaling_factor}, indent=2))
    return path


@dataclass(frozen=True)
class DCAERecipe:
    """How the demo DC-AE is trained: the demo VAE's images, crops, steps and optimiser, at 16x
    (four times the demo VAE's 4x, as DC-AE f32 is four times SDXL's 8x) with 64 channels, so
    each latent value stands for 12 pixel values as in the demo VAE (4 x 4 x 3 / 4). At patch
    size 1 a 64 px image is 4 x 4 = 16 tokens, a quarter of the demo's 8 x 8 patches of 2.
    Every field is in the cache hash."""

    seed: int = 0
    images: int = 1024
    held_out: int = 64
    resolution: int = 64  # px
    crop: int = 32  # px: a multiple of the downscale (2 x 2 latent cells)
    steps: int = 1800
    batch: int = 32
    lr: float = 2e-3  # Adam, cosine to 10 %
    # Five blocks: downsample by 16. The last is as wide as the latent: the encoder's output
    # shortcut averages groups of last-block channels down to the latent's (autoencoder_dc.py).
    channels: tuple[int, ...] = (8, 16, 32, 32, 64)
    latent_channels: int = 64
    threads: int = 2

    def key(self) -> str:
        from infra.mirror.corpus import VERSION

        text = json.dumps({**asdict(self), "kind": "AutoencoderDC", "corpus": VERSION},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def dcae_psnr(dcae: AutoencoderDC, images: torch.Tensor) -> float:
    """Reconstruction PSNR in dB (peak 2: the [-1, 1] range); DC-AE latents are deterministic."""
    with torch.no_grad():
        decoded = dcae.decode(dcae.encode(images).latent).sample.clamp(-1, 1)
    return 10 * math.log10(1 / float(((decoded - images) / 2).pow(2).mean()))


def train_demo_dcae(path: Path | str, recipe: DCAERecipe = DCAERecipe()) -> Path:
    """Train the demo AutoencoderDC as the demo VAE is trained (train_demo_vae), with a plain
    per-pixel MSE (a DC-AE has no posterior, so no KL term), and save it with its recipe and
    held-out PSNR; the scaling factor is 1 / std of the training latents."""
    with torch_threads(recipe.threads):
        path = Path(path)
        torch.manual_seed(recipe.seed)
        train = demo_images(recipe.images, recipe.seed, recipe.resolution)
        held_out = demo_images(recipe.held_out, recipe.seed + 1, recipe.resolution)
        dcae = tiny_dcae(recipe.channels, recipe.latent_channels)
        opt = torch.optim.Adam(dcae.parameters(), lr=recipe.lr)
        gen = torch.Generator().manual_seed(recipe.seed)
        for step in range(recipe.steps):
            for group in opt.param_groups:
                group["lr"] = recipe.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * step
                                                                      / recipe.steps)))
            x = train[torch.randint(0, len(train), (recipe.batch,), generator=gen)]
            top, left = torch.randint(0, recipe.resolution - recipe.crop + 1, (2,),
                                      generator=gen).tolist()
            x = x[:, :, top:top + recipe.crop, left:left + recipe.crop]  # (B, 3, crop, crop)
            loss = (dcae.decode(dcae.encode(x).latent).sample - x).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        dcae.eval()
        with torch.no_grad():
            std = float(torch.cat([dcae.encode(train[i:i + 256]).latent
                                   for i in range(0, len(train), 256)]).std())
        dcae.register_to_config(scaling_factor=round(1.0 / std, 5))
        dcae.save_pretrained(path)
        (path / RECIPE_FILE).write_text(json.dumps(
            {"key": recipe.key(), "recipe": asdict(recipe),
             "held_out_psnr_db": round(dcae_psnr(dcae, held_out), 2),
             "scaling_factor": dcae.config.scaling_factor}, indent=2))
    return path
