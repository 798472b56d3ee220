"""benchmarks/word_sensitivity.py: the swap of one attribute word, and a zero for a word the
model cannot see."""

from __future__ import annotations

import random
import zlib

import torch

from benchmarks.word_sensitivity import SWAPS, render, sensitivity, swapped
from demo.attributes import Scene, parse_prompt
from model.config import preset
from model.edm import EDMPrecond
from model.microdit import MicroDiT


def test_each_swap_changes_exactly_its_attribute_and_the_caption_still_parses():
    rng = random.Random(0)
    item = Scene("circle", "red", "top left", "gray")
    changed = {swap: swapped(item, swap, rng) for swap in SWAPS}
    assert changed["vertical"].position == "bottom left"
    assert changed["horizontal"].position == "top right"
    for swap, other in changed.items():
        field = "position" if swap in ("vertical", "horizontal") else swap
        assert getattr(other, field) != getattr(item, field)
        kept = [f for f in ("shape", "color", "position", "background") if f != field]
        assert all(getattr(other, f) == getattr(item, f) for f in kept)
        assert parse_prompt(render(other)) == other


def word_encoder(blind: set[str], dim: int = 8, length: int = 12):
    """One fixed random vector per word; words in `blind` are dropped, so the model cannot
    tell captions that differ only in them apart."""
    def encode(captions: list[str]) -> torch.Tensor:
        out = torch.zeros(len(captions), length, dim)
        for row, text in enumerate(captions):
            words = [w for w in text.lower().strip(".").split() if w not in blind]
            for col, word in enumerate(words[:length]):
                gen = torch.Generator().manual_seed(zlib.crc32(word.encode()))
                out[row, col] = torch.randn(dim, generator=gen)
        return out
    return encode


def test_a_word_the_text_encoder_drops_scores_zero_and_the_others_do_not():
    torch.manual_seed(0)
    net = MicroDiT(preset("tiny", caption_dim=8)).eval()
    with torch.no_grad():  # away from the zero-initialised outputs, so text reaches D
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    result = sensitivity(EDMPrecond(net), word_encoder({"left", "right"}), [1.0, 10.0],
                         captions=6, seed=0)
    assert set(result) == set(SWAPS)
    assert all(v == 0.0 for v in result["horizontal"].values())
    for swap in ("shape", "color", "vertical", "background"):
        assert all(v > 1e-4 for v in result[swap].values()), (swap, result[swap])


def test_position_errors_name_the_wrong_word():
    from benchmarks.word_sensitivity import position_error

    assert position_error("top left", "top left") is None
    assert position_error("top left", "top right") == "horizontal"
    assert position_error("top left", "bottom left") == "vertical"
    assert position_error("top left", "bottom right") == "diagonal"


def test_the_causal_demo_tower_mixes_the_vertical_word_into_the_horizontal_token(tmp_path):
    from transformers import AutoTokenizer, CLIPTextModel

    from benchmarks.word_sensitivity import entanglement
    from tasks.encode.tiny import save_tiny_text_encoder

    path = save_tiny_text_encoder(tmp_path / "text")
    tokens = entanglement(AutoTokenizer.from_pretrained(path),
                          CLIPTextModel.from_pretrained(path).eval(), captions=6)
    assert tokens["vertical"]["other"] == 0.0  # earlier tokens never see later words
    assert tokens["vertical"]["own"] > 0.5 and tokens["horizontal"]["own"] > 0.5
    assert tokens["horizontal"]["other"] > 0.5  # the "left" token also says top or bottom
