"""The demo text tower's tokenizer: each word of the demo captions is one token, any other text
still tokenizes (byte-level), and a stale text tower is rebuilt by `python -m tasks.models`."""

from __future__ import annotations

import json

from transformers import AutoTokenizer

from tasks.encode.tiny import (TEXT_VERSION_FILE, demo_words, save_tiny_text_encoder,
                               text_encoder_current)
from tasks.models import is_current


def test_every_demo_word_is_one_token_and_other_text_still_tokenizes(tmp_path):
    path = save_tiny_text_encoder(tmp_path / "text")
    tokenizer = AutoTokenizer.from_pretrained(path)
    words = demo_words()
    assert {"top", "bottom", "left", "right", "triangle", "yellow", "background"} <= set(words)
    for word in words:
        tokens = tokenizer.tokenize(word)
        assert tokens == [f"{word}</w>"], (word, tokens)
    caption = "There is a green triangle at the bottom left of the image, on a gray background."
    ids = tokenizer(caption).input_ids
    assert len(ids) == 20  # 17 words + 2 punctuation marks + start/end, not one per byte
    # Words outside the vocabulary fall back to bytes and decode back to the same text.
    other = tokenizer("a photo of a cat").input_ids
    assert tokenizer.decode(other, skip_special_tokens=True).strip() == "a photo of a cat"
    config = json.loads((path / "config.json").read_text())
    assert config["vocab_size"] == len(tokenizer.get_vocab())


def test_a_text_tower_of_an_older_version_is_rebuilt(tmp_path):
    path = save_tiny_text_encoder(tmp_path / "text")
    assert text_encoder_current(path) and is_current(save_tiny_text_encoder, path)
    (path / TEXT_VERSION_FILE).unlink()  # as saved before the word merges
    assert not is_current(save_tiny_text_encoder, path)
