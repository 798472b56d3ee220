"""Pricing of compute: GPU-seconds x GPUs x $/GPU-hour, from params.yaml's cost section."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CostParams:
    """Price list; gpu_type selects the rate that a GPU stage is charged at."""

    gpu_type: str = "cpu"
    usd_per_gpu_hour: dict[str, float] = field(default_factory=lambda: {"cpu": 0.0, "H100": 3.75})

    def __post_init__(self) -> None:
        if self.gpu_type not in self.usd_per_gpu_hour:
            raise ValueError(
                f"gpu_type {self.gpu_type!r} has no price; known: {sorted(self.usd_per_gpu_hour)}"
            )
        for name, rate in self.usd_per_gpu_hour.items():
            if rate < 0:
                raise ValueError(f"usd_per_gpu_hour.{name} must be >= 0, got {rate}")

    @property
    def rate(self) -> float:
        return self.usd_per_gpu_hour[self.gpu_type]


def gpu_hours(seconds: float, gpus: int) -> float:
    return seconds * gpus / 3600.0


def cost_usd(seconds: float, gpus: int, usd_per_gpu_hour: float) -> float:
    """Dollar cost of holding `gpus` devices for `seconds` of wall time."""
    return gpu_hours(seconds, gpus) * usd_per_gpu_hour
