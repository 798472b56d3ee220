"""Download step parameters: one section per dataset plus the shared image filter.

Source locations are URLs (http, https, s3) or paths relative to the repository root. A
`{mirror}` placeholder is replaced by the local mirror's base URL at run time, so the demo profile
follows the mirror wherever its port is configured.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal


@dataclass(frozen=True, kw_only=True)
class SourceParams:
    """Switch, subset and sharding shared by every dataset."""

    enabled: bool = False
    fraction: float = 1.0  # share of the source taken, (0, 1]: of rows, or of archives
    max_samples: int | None = None  # cap on source samples attempted; null: no cap
    shard_size: int = 1000  # source samples per output shard
    optional: ClassVar[tuple[str, ...]] = ()  # location fields that may stay empty

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 or null, got {self.max_samples}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.enabled:
            missing = [f.name for f in fields(self)
                       if f.type in ("str", str) and not getattr(self, f.name)
                       and f.name not in self.optional]
            if missing:
                raise ValueError(f"enabled, but no source location in {missing}")


@dataclass(frozen=True, kw_only=True)
class CC3MParams(SourceParams):
    """Conceptual Captions 3M: the official caption<TAB>url file, fetched with img2dataset."""

    tsv: str = ""  # Train_GCC-training.tsv (terms of use: download it by hand, give its path)
    processes: int = 1  # img2dataset processes per shard

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")


@dataclass(frozen=True, kw_only=True)
class SA1BParams(SourceParams):
    """SA-1B: tar archives of jpg + json listed in Meta's link file; captions come later."""

    links: str = ""  # file_name<TAB>cdn_link list; its signed links expire, so it is an input


@dataclass(frozen=True, kw_only=True)
class TextCapsParams(SourceParams):
    """TextCaps: the official annotation JSONs (one entry per caption) and their images, from
    the TextVQA image archive (train_images/<image_id>.jpg inside train_val_images.zip) or,
    with `images` empty, from each entry's Flickr URL (which rot)."""

    annotations: str = ""  # TextCaps_0.1_train.json
    val_annotations: str = ""  # TextCaps_0.1_val.json ("": train split only)
    images: str = ""  # train_val_images.zip ("": the entries' flickr_original_url)
    optional: ClassVar[tuple[str, ...]] = ("val_annotations", "images")


@dataclass(frozen=True, kw_only=True)
class JourneyDBParams(SourceParams):
    """JourneyDB in its Hugging Face layout: annotation jsonl(.tgz) + image archives NNN.tgz."""

    annotations: str = ""  # data/train/train_anno_realease_repath.jsonl.tgz
    images: str = ""  # folder URL of data/train/imgs/, holding 000.tgz ... 199.tgz


@dataclass(frozen=True, kw_only=True)
class DiffusionDBParams(SourceParams):
    """DiffusionDB: a metadata parquet and part zips of images; prompts are the captions.

    `variant: large` is DiffusionDB Large (14M images, what the reference trains on):
    metadata-large.parquet, parts 1-10000 in diffusiondb-large-part-1/ and 10001-14000 in
    diffusiondb-large-part-2/, lossless WebP inside. `variant: 2m` is DiffusionDB 2M:
    metadata.parquet, images/part-NNNNNN.zip of PNG.
    """

    variant: Literal["2m", "large"] = "2m"
    metadata: str = ""  # metadata.parquet (2m) or metadata-large.parquet (large)
    parts: str = ""  # folder URL holding the parts: images/ (2m), the dataset root (large)
    nsfw_max: float = 0.2  # rows with image_nsfw or prompt_nsfw above this are dropped

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.nsfw_max <= 1.0:
            raise ValueError(f"nsfw_max must be in [0, 1], got {self.nsfw_max}")


@dataclass(frozen=True, kw_only=True)
class CocoParams(SourceParams):
    """COCO-2014 val: captions_val2014.json (or the annotations zip) and the images it links."""

    annotations: str = ""  # captions_val2014.json or annotations_trainval2014.zip


@dataclass(frozen=True)
class ImageParams:
    """The reference filter: skip small images, downscale large ones, re-encode as JPEG."""

    min_short_side: int = 256  # px; images whose short side is smaller are skipped
    max_short_side: int = 512  # px; larger short sides are downscaled to this (bicubic)
    jpeg_quality: int = 95  # 1-100

    def __post_init__(self) -> None:
        if not 1 <= self.min_short_side <= self.max_short_side:
            raise ValueError(f"need 1 <= min_short_side <= max_short_side, got "
                             f"{self.min_short_side} and {self.max_short_side}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")


@dataclass(frozen=True)
class DownloadParams:
    cc3m: CC3MParams = field(default_factory=CC3MParams)
    sa1b: SA1BParams = field(default_factory=SA1BParams)
    textcaps: TextCapsParams = field(default_factory=TextCapsParams)
    journeydb: JourneyDBParams = field(default_factory=JourneyDBParams)
    diffusiondb: DiffusionDBParams = field(default_factory=DiffusionDBParams)
    coco: CocoParams = field(default_factory=CocoParams)
    image: ImageParams = field(default_factory=ImageParams)
    threads: int = 8  # concurrent image fetches and decodes per dataset
    timeout_s: float = 10.0  # per HTTP request
    http_retries: int = 2  # extra attempts per image on 5xx, 429 and connection errors
    archive_retries: int = 8  # extra attempts per archive or source file; each resumes
    backoff_s: float = 1.0  # s; retry k of an archive waits uniform(0, backoff_s * 2^(k-1))
    backoff_max_s: float = 60.0  # s; cap of one wait, a server's Retry-After included
    scratch_dir: str = ""  # archives are staged here ("": the system temp folder)
    scratch_reserve_gib: float = 1.0  # GiB left free on the scratch disk beyond an archive
    token_hosts: tuple[str, ...] = ("huggingface.co",)  # hosts that may receive HF_TOKEN

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.http_retries < 0:
            raise ValueError(f"http_retries must be >= 0, got {self.http_retries}")
        if self.archive_retries < 0:
            raise ValueError(f"archive_retries must be >= 0, got {self.archive_retries}")
        if not 0 < self.backoff_s <= self.backoff_max_s:
            raise ValueError(f"need 0 < backoff_s <= backoff_max_s, got {self.backoff_s} "
                             f"and {self.backoff_max_s}")
        if self.scratch_reserve_gib < 0:
            raise ValueError(f"scratch_reserve_gib must be >= 0, got {self.scratch_reserve_gib}")

    def source(self, name: str) -> SourceParams:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; known: {list(DATASETS)}")
        return getattr(self, name)

    def enabled(self) -> list[str]:
        return [name for name in DATASETS if self.source(name).enabled]


# Download order of `run`: the evaluation set first, then the training sets.
DATASETS = ("coco", "cc3m", "sa1b", "textcaps", "journeydb", "diffusiondb")
