"""A tiny random-init LLaVA (CLIP vision tower + Llama decoder) saved in Hugging Face format.

Tests and the demo load it with from_pretrained, the same code path as llava-1.5-7b. Its
tokenizer is word-level over a small English vocabulary, so even random weights decode to words
and the cleaning and garbage rules see text shaped like a caption.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaProcessor,
                          PreTrainedTokenizerFast)

SPECIAL = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
WORDS = tuple("""a an the of with on in at and near under behind beside photo image picture
painting view showing red green blue white black grey yellow brown small large tall old new
bright dark man woman child people group dog cat horse bird car bus bike street road tree
forest house building tower bridge sky cloud water river lake sea beach mountain field grass
table room window door city village park garden market sitting standing walking two three
many front side top bottom sunny evening morning light shadow stone wood glass metal
USER: ASSISTANT: Describe this and its style very detailed manner.""".split())
IMAGE_SIZE = 32  # px
PATCH = 8  # px: (32 / 8)^2 = 16 patch tokens + CLS


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(dict.fromkeys(SPECIAL + WORDS))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>", padding_side="left",
                                   extra_special_tokens={"image_token": "<image>"})


def save_tiny_llava(path: Path | str, seed: int = 0) -> Path:
    """Write config, weights (safetensors), tokenizer and processor of a ~0.1M-parameter LLaVA."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    vocab = tokenizer.get_vocab()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                           crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1)  # the CLS token the "default" strategy drops
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH)
    text = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                       max_position_embeddings=512, bos_token_id=vocab["<s>"],
                       eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"])
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=vocab["<image>"], vision_feature_layer=-2,
                         vision_feature_select_strategy="default",
                         image_seq_length=(IMAGE_SIZE // PATCH) ** 2)
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path
