"""open_clip's tokenizer and its bundled BPE vocabulary, without importing the open_clip package.

The package's __init__ pulls torchvision and timm, which this project does not install;
open_clip/tokenizer.py itself needs only ftfy, regex and torch, so it is loaded as a file.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from types import ModuleType

# open_clip names its special tokens <start_of_text> / <end_of_text>; the Hugging Face files of
# the same vocabulary (e.g. apple/DFN5B-CLIP-ViT-H-14-378) use these, at the same ids.
HF_SPECIAL = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}


def package_dir() -> Path:
    spec = importlib.util.find_spec("open_clip")
    assert spec is not None and spec.submodule_search_locations, "open-clip-torch not installed"
    return Path(next(iter(spec.submodule_search_locations)))


def open_clip_tokenizer_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer",
                                                  package_dir() / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_hf_clip_tokenizer(path: Path, module: ModuleType) -> Path:
    """vocab.json + merges.txt of open_clip's bundled BPE as a Hugging Face CLIPTokenizer folder,
    configured like DFN5B-CLIP's files (pad token <|endoftext|>, 77 tokens)."""
    from transformers import CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    encoder = module.SimpleTokenizer().encoder
    vocab = {HF_SPECIAL.get(token, token): index for token, index in encoder.items()}
    lines = gzip.open(package_dir() / "bpe_simple_vocab_16e6.txt.gz").read().decode().split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]  # the slice open_clip's SimpleTokenizer reads
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    CLIPTokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"),
                  pad_token="<|endoftext|>", model_max_length=77).save_pretrained(path)
    return path
