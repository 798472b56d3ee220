"""Our caption tokenization equals open_clip's, which the reference trained with.

An imported reference checkpoint is conditioned on the full 77-token sequence, pad positions
included, so the ids must match exactly: cleaning (ftfy, HTML entities), truncation, pad id 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

from tasks.common.encoders import encode_captions, load, tokenize_captions
from tasks.encode.config import EncodeParams
from tasks.encode.tiny import save_tiny_vae
from tests.tasks.open_clip_vocab import open_clip_tokenizer_module, save_hf_clip_tokenizer

CAPTIONS = [
    "",
    "a photo of a cat",
    "A  Photo,  of a CAT!!! (really?) -- yes; 100% #1 @home",
    "Café crème brûlée — naïve façade “quoted” ‘single’",
    "日本の桜と富士山",
    "emoji 🐱🚀 test",
    "fish &amp; chips &lt;3",
    "ﬁne ligature and ＦＵＬＬＷＩＤＴＨ letters",
    "tabs\tand\nnewlines  ",
    "İstanbul ǅ straße",
    " ".join(f"word{i}" for i in range(120)),  # over 77 tokens: truncated, end token kept
]


@pytest.fixture(scope="module")
def open_clip_tok():
    return open_clip_tokenizer_module().SimpleTokenizer()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    return save_hf_clip_tokenizer(tmp_path_factory.mktemp("clip-tokenizer"),
                                  open_clip_tokenizer_module())


def test_our_ids_equal_open_clips(hf_folder: Path, open_clip_tok) -> None:
    tokenizer = AutoTokenizer.from_pretrained(hf_folder)  # as encoders.load loads it
    ours = tokenize_captions(tokenizer, CAPTIONS, 77)
    theirs = open_clip_tok(CAPTIONS, context_length=77)
    for caption, a, b in zip(CAPTIONS, ours, theirs):
        assert torch.equal(a, b), f"{caption!r}: {a.tolist()} != {b.tolist()}"
    assert ours[0].tolist()[:3] == [49406, 49407, 0]
    assert ours[-1][-1].item() == 49407


def test_the_hf_files_alone_differ(hf_folder: Path, open_clip_tok) -> None:
    """Why the setting exists: the HF files pad with 49407 and skip open_clip's cleaning."""
    tokenizer = AutoTokenizer.from_pretrained(hf_folder)
    plain = tokenize_captions(tokenizer, CAPTIONS, 77, compat="hf")
    theirs = open_clip_tok(CAPTIONS, context_length=77)
    assert plain[1, -1].item() == 49407 and theirs[1, -1].item() == 0
    differ = [c for c, a, b in zip(CAPTIONS, plain, theirs)
              if not torch.equal(a[b != 0], b[b != 0])]
    assert {"fish &amp; chips &lt;3", "ﬁne ligature and ＦＵＬＬＷＩＤＴＨ letters"} <= set(differ)


def test_encode_captions_runs_the_open_clip_ids(hf_folder: Path, open_clip_tok,
                                                tmp_path: Path) -> None:
    """encoders.load wires the setting: the text tower sees exactly open_clip's ids."""
    torch.manual_seed(0)
    tower = tmp_path / "text"
    CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 max_position_embeddings=77)).save_pretrained(tower)
    params = EncodeParams(vae=str(save_tiny_vae(tmp_path / "vae")), text_encoder=str(tower),
                          tokenizer=str(hf_folder), device="cpu")
    enc = load(params)
    got = encode_captions(enc, CAPTIONS[:4], 77)
    with torch.no_grad():
        ids = open_clip_tok(CAPTIONS[:4], context_length=77)
        want = enc.text_model(input_ids=ids).last_hidden_state.to(torch.float16).numpy()
    np.testing.assert_array_equal(got, want)


def test_a_shorter_text_length_keeps_the_first_tokens_exactly(tmp_path: Path) -> None:
    # The demo encodes 24 tokens where the recipe encodes 77 (params.yaml). CLIP's text tower
    # is causal, so a caption that fits gets the same first 24 tokens either way: the shorter
    # length drops padding, not what the caption says.
    from tasks.encode.tiny import save_tiny_text_encoder

    folder = save_tiny_text_encoder(tmp_path / "text")
    enc = load(EncodeParams(vae=str(save_tiny_vae(tmp_path / "vae")), text_encoder=str(folder),
                            device="cpu"))
    captions = ["A red square in the top left corner of a white picture.", "a blue circle"]
    long, short = encode_captions(enc, captions, 77), encode_captions(enc, captions, 24)
    assert short.shape == (2, 24, long.shape[-1])
    # Equal up to the fp16 rounding of the stored tokens (the kernels sum in another order).
    np.testing.assert_allclose(short.astype(np.float32), long[:, :24].astype(np.float32),
                               rtol=0, atol=2e-3)
    assert not np.array_equal(short[0], short[1])
