"""params.yaml: one frozen dataclass per step, selected by the `profile` switch.

params.yaml holds `profile: NAME` and one block per profile (demo and full, and variants such as
full_dcae that `extends` one and override some sections); each block has one section per step.
`load_params` validates every profile block (a typo in an unused profile is still an error) and
returns the selected one. A driver (the CLI, DVC, the pipeline flow) loads it once;
every process of the run after that receives the resolved text and its hash (`dumps_resolved`,
`loads_resolved`), never a path to read again on its own machine.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.config import ConfigError, build, to_dict
from infra.settings import REPO_ROOT
from tasks.caption.config import CaptionParams
from tasks.common.cost import CostParams
from tasks.download.config import DownloadParams
from tasks.encode.config import EncodeParams
from tasks.evaluate.config import EvaluateParams
from tasks.train.config import TrainParams

DEFAULT_PATH = REPO_ROOT / "params.yaml"


@dataclass(frozen=True)
class StorageParams:
    """Where the pipeline keeps its data in S3."""

    bucket: str = "micro-budget"
    raw_prefix: str = "raw"  # s3://bucket/raw/<dataset>/
    latents_prefix: str = "latents"  # s3://bucket/latents/<dataset>/
    runs_prefix: str = "runs"  # s3://bucket/runs/<run>/<stage>/
    pipeline_prefix: str = "pipeline"  # s3://bucket/pipeline/<flow run>/<step>.json envelopes
    out_dir: str = "out"  # local folder (relative: to the repository) of the CLI/DVC envelopes

    def __post_init__(self) -> None:
        if not 3 <= len(self.bucket) <= 63 or not self.bucket.replace("-", "").isalnum():
            raise ValueError(f"bucket {self.bucket!r}: 3-63 lowercase letters, digits or '-'")
        if self.bucket != self.bucket.lower():
            raise ValueError(f"bucket {self.bucket!r} must be lowercase")

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *(p.strip("/") for p in parts)])

    def out_path(self, name: str) -> Path:
        root = Path(self.out_dir)
        return (root if root.is_absolute() else REPO_ROOT / root) / name


@dataclass(frozen=True)
class Params:
    profile: str
    storage: StorageParams = field(default_factory=StorageParams)
    cost: CostParams = field(default_factory=CostParams)
    download: DownloadParams = field(default_factory=DownloadParams)
    caption: CaptionParams = field(default_factory=CaptionParams)
    encode: EncodeParams = field(default_factory=EncodeParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)


def profile_blocks(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every profile block of a params mapping, each with its `extends` resolved: a block that
    says `extends: NAME` is that profile's block with its own sections laid over it (merge), so
    a variant such as full_dcae states only what it changes."""
    raw: dict[str, dict[str, Any]] = {}
    for name, block in data.items():
        if name == "profile":
            continue
        if block is not None and not isinstance(block, dict):
            raise ConfigError(f"params.yaml: unknown top-level key {name!r}: every key but "
                              "`profile` is a profile, a mapping of step sections")
        raw[name] = block or {}

    def resolved(name: str, seen: tuple[str, ...]) -> dict[str, Any]:
        block = dict(raw[name])
        base = block.pop("extends", None)
        if base is None:
            return block
        if base not in raw:
            raise ConfigError(f"{name}.extends: {base!r} is not a profile {sorted(raw)}")
        if base in seen:
            raise ConfigError(f"{name}.extends: profiles extend in a circle {[*seen, base]}")
        return merge(resolved(base, (*seen, base)), block, name)

    return {name: resolved(name, (name,)) for name in raw}


def parse_params(data: Any, profile: str | None = None) -> Params:
    """Validate a params.yaml mapping and return the selected profile."""
    if not isinstance(data, dict):
        raise ConfigError("params.yaml: top level must be a mapping")
    blocks = profile_blocks(data)
    selected = profile or os.environ.get("MB_PROFILE") or data.get("profile")
    if selected not in blocks:
        raise ConfigError(f"profile: {selected!r} is not one of {sorted(blocks)}")
    # Every block is validated, so a typo in a profile not run today is still an error.
    built = {name: build(Params, {"profile": name, **block}, name)
             for name, block in blocks.items()}
    return built[selected]


def _read_yaml(path: Path) -> Any:
    if not path.exists():
        raise ConfigError(f"{path}: params file not found")
    with open(path) as fh:
        try:
            return yaml.safe_load(fh)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err


def merge(base: Any, override: Any, where: str) -> Any:
    """`override` laid over `base`: mappings key by key, lists of mappings of the same length
    item by item (a stage table keeps its rows), anything else replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base[key], value, f"{where}.{key}") if key in base else value
        return out
    if isinstance(base, list) and isinstance(override, list) and len(base) == len(override) \
            and all(isinstance(v, dict) for v in base + override):
        return [merge(b, o, f"{where}[{i}]") for i, (b, o) in enumerate(zip(base, override))]
    return override


def resolve_extends(data: Any, path: Path) -> Any:
    """A params file may extend another: `extends: FILE` (relative to this file), `profile:
    NAME`, and `overrides:` merged into that profile's block; the result is a normal file."""
    if not isinstance(data, dict) or "extends" not in data:
        return data
    unknown = sorted(set(data) - {"extends", "profile", "overrides"})
    if unknown:
        raise ConfigError(f"{path}: a file with `extends` takes only extends, profile and "
                          f"overrides; unknown {unknown}")
    base_path = (path.parent / str(data["extends"])).resolve()
    base = resolve_extends(_read_yaml(base_path), base_path)
    name = data.get("profile") or base.get("profile")
    if name not in base:
        raise ConfigError(f"{path}: profile {name!r} is not in {base_path}")
    return {"profile": name, name: merge(base[name], data.get("overrides") or {}, name)}


def load_params(path: Path | str | None = None, profile: str | None = None) -> Params:
    """Read and validate params.yaml (default: the repository's, or $MB_PARAMS)."""
    path = Path(path or os.environ.get("MB_PARAMS") or DEFAULT_PATH)
    return parse_params(resolve_extends(_read_yaml(path), path), profile)


# The environment variables that carry resolved params into a child process (a torchrun rank,
# a fan-out device), set by `resolved_env` and read by `params_from_env`.
RESOLVED_ENV = "MB_RESOLVED_PARAMS"
RESOLVED_SHA_ENV = "MB_RESOLVED_PARAMS_SHA256"


def dumps_resolved(params: Params) -> tuple[str, str]:
    """The resolved profile as one-profile params text, and the text's sha256 (hex).

    Every hop of a run (pipeline -> step flow run -> units or node flow run -> torchrun rank
    or device process) receives this pair instead of a path: a receiver loads exactly what the
    driver approved (its --params file, profile and MB_PROFILE included), never the params.yaml
    of its own checkout."""
    block = {k: v for k, v in to_dict(params).items() if k != "profile"}
    text = yaml.safe_dump({"profile": params.profile, params.profile: block}, sort_keys=False)
    return text, hashlib.sha256(text.encode()).hexdigest()


def loads_resolved(text: str, sha256: str) -> Params:
    """The params of `dumps_resolved`'s text, after checking the text still has its hash."""
    actual = hashlib.sha256(text.encode()).hexdigest()
    if actual != sha256:
        raise ConfigError(f"resolved params: the text's sha256 is {actual[:12]}, not the "
                          f"approved {sha256[:12]}: it was changed on the way; start the run "
                          "again from the driver")
    data = yaml.safe_load(text)
    # The text names its profile: MB_PROFILE on the receiving machine must not pick another.
    return parse_params(data, data.get("profile") if isinstance(data, dict) else None)


def resolved_env(params: Params) -> dict[str, str]:
    """Environment entries that hand `params` to a child process (see params_from_env)."""
    text, sha256 = dumps_resolved(params)
    return {RESOLVED_ENV: text, RESOLVED_SHA_ENV: sha256}


def params_from_env() -> Params | None:
    """The params a parent handed over through `resolved_env`, None when it handed none."""
    text = os.environ.get(RESOLVED_ENV)
    if text is None:
        return None
    return loads_resolved(text, os.environ.get(RESOLVED_SHA_ENV, ""))
