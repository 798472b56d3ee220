"""Pricing of compute, one rule for every path (CLI, DVC, Prefect, per stage, per node): device
wall time x devices used x $/device-hour, from params.yaml's cost section."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CostParams:
    """Price list; gpu_type selects the rate that a GPU stage is charged at."""

    gpu_type: str = "cpu"
    usd_per_gpu_hour: dict[str, float] = field(default_factory=lambda: {"cpu": 0.0, "H100": 3.75})
    budget_usd: float | None = None  # the flow refuses a run whose plan costs more; null: none
    # The plan (python -m tasks plan): measured throughput per device where there is one
    # (keys: caption, encode, or a stage name; captions or images per second), else model
    # FLOPs at `mfu` of the device's dense peak.
    throughput: dict[str, float] = field(default_factory=dict)
    mfu: float = 0.3  # model FLOP utilisation assumed where no throughput is measured
    peak_tflops: dict[str, float] = field(default_factory=lambda: {"H100": 989.0})

    def __post_init__(self) -> None:
        if self.budget_usd is not None and self.budget_usd <= 0:
            raise ValueError(f"cost.budget_usd must be > 0 or null, got {self.budget_usd}")
        if not 0 < self.mfu <= 1:
            raise ValueError(f"cost.mfu must be in (0, 1], got {self.mfu}")
        bad = {k: v for k, v in {**self.throughput, **self.peak_tflops}.items() if v <= 0}
        if bad:
            raise ValueError(f"cost.throughput and cost.peak_tflops must be > 0, got {bad}")
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


@dataclass(frozen=True)
class Price:
    seconds: float  # device wall time
    devices: int  # devices charged
    device_type: str  # the price-list entry charged
    device_hours: float
    cost_usd: float


def price(cost: CostParams, seconds: float, devices: int, on_gpu: bool = True) -> Price:
    """`devices` held for `seconds`: GPU work at cost.gpu_type's rate per device; CPU work
    (on_gpu False, or a cpu price list) as one machine, however many processes shared it."""
    device_type = cost.gpu_type if on_gpu else "cpu"
    devices = devices if device_type != "cpu" else 1
    rate = cost.usd_per_gpu_hour.get(device_type, 0.0)
    return Price(seconds, devices, device_type, gpu_hours(seconds, devices),
                 cost_usd(seconds, devices, rate))
