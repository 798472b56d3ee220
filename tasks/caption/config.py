"""Caption step parameters: LLaVA (or a published caption file) for SA-1B, which has none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# LLaVA-1.5's conversation format; `<image>` is replaced by the image tokens by the processor.
LLAVA_PROMPT = "USER: <image>\nDescribe this image and its style in a very detailed manner. ASSISTANT:"


@dataclass(frozen=True)
class CaptionParams:
    """How SA-1B samples get captions (reference.md, "Datasets": LLaVA captions for SA-1B).

    `source: llava` generates them; `source: file` reads a published caption file keyed by
    image id (JSON object, JSONL with `image_id` and `caption`, or a tar of <id>.txt), with no
    GPU; `source: file+llava` takes the file's caption where it has the image and captions only
    the images it lacks with LLaVA (counted as not_in_file and llava in the step's summary).
    """

    enabled: bool = True
    datasets: tuple[str, ...] = ("sa1b",)  # raw datasets whose samples need captions
    source: Literal["llava", "file", "file+llava"] = "llava"
    model: str = "llava-hf/llava-1.5-7b-hf"  # Hugging Face id or local folder
    prompt: str = LLAVA_PROMPT
    max_new_tokens: int = 64  # tokens
    # generate: transformers' generate per batch; continuous: a finished caption's row takes the
    # next image at once (same greedy captions; docs/benchmarks.md "Captioning" measures both)
    engine: Literal["generate", "continuous"] = "generate"
    batch_size: int = 32  # images per generate call; rows decoded at once (continuous)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    cache_implementation: Literal["dynamic", "static"] = "dynamic"  # static: fixed-shape KV cache
    compile: bool = False  # torch.compile the decoder forward (GPU only)
    min_chars: int = 10  # a cleaned caption shorter than this is garbage
    max_repeat_share: float = 0.5  # garbage when one word is more than this share of the words
    retry_temperature: float = 0.7  # the single retry samples instead of decoding greedily
    seed: int = 0
    captions_file: str | None = None  # source: file; URL, s3:// URI or path; `{mirror}` expands

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size", "min_chars"):
            if getattr(self, name) <= 0:
                raise ValueError(f"caption.{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 < self.max_repeat_share <= 1.0:
            raise ValueError(f"caption.max_repeat_share must be in (0, 1], got {self.max_repeat_share}")
        if self.retry_temperature <= 0:
            raise ValueError(f"caption.retry_temperature must be > 0, got {self.retry_temperature}")
        if self.source != "file" and "<image>" not in self.prompt:
            raise ValueError("caption.prompt must contain the <image> placeholder")
        if self.source != "llava" and not self.captions_file:
            raise ValueError(f"caption.source is '{self.source}' but caption.captions_file is "
                             "not set")
