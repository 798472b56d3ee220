"""Pricing of compute, one rule for every path (CLI, DVC, Prefect, per stage, per node): device
wall time x devices used x $/device-hour, from params.yaml's cost section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CostParams:
    """Price list; gpu_type selects the rate that a GPU stage is charged at."""

    gpu_type: str = "cpu"
    usd_per_gpu_hour: dict[str, float] = field(default_factory=lambda: {"cpu": 0.0, "H100": 3.75})
    # Preemptible (spot) rates; price_class picks the list a run is charged at.
    spot_usd_per_gpu_hour: dict[str, float] = field(default_factory=dict)
    price_class: str = "on_demand"  # on_demand | spot
    spot_preemptions_per_hour: float = 0.0  # expected preemptions per node-hour on spot
    restart_s: float = 0.0  # s from a preemption to the stage training again (the plan's loss)
    budget_usd: float | None = None  # the flow refuses a run whose plan costs more; null: none
    # The plan (python -m tasks plan): measured throughput per device where there is one
    # (keys: caption, encode, or a stage name; captions or images per second), else model
    # FLOPs at `mfu` of the device's dense peak. A null entry is no rate: a variant profile
    # sets one to drop a rate it inherits that does not hold for it (full_dcae: the SDXL-latent
    # step rates).
    throughput: dict[str, float | None] = field(default_factory=dict)
    mfu: float = 0.3  # model FLOP utilisation assumed where no throughput is measured
    peak_tflops: dict[str, float] = field(default_factory=lambda: {"H100": 989.0})

    def __post_init__(self) -> None:
        if self.budget_usd is not None and self.budget_usd <= 0:
            raise ValueError(f"cost.budget_usd must be > 0 or null, got {self.budget_usd}")
        if not 0 < self.mfu <= 1:
            raise ValueError(f"cost.mfu must be in (0, 1], got {self.mfu}")
        bad = {k: v for k, v in {**self.throughput, **self.peak_tflops}.items()
               if v is not None and v <= 0}
        if bad:
            raise ValueError(f"cost.throughput and cost.peak_tflops must be > 0, got {bad}")
        if self.gpu_type not in self.usd_per_gpu_hour:
            raise ValueError(
                f"gpu_type {self.gpu_type!r} has no price; known: {sorted(self.usd_per_gpu_hour)}"
            )
        if self.price_class not in PRICE_CLASSES:
            raise ValueError(f"cost.price_class must be one of {PRICE_CLASSES}, "
                             f"got {self.price_class!r}")
        if self.price_class == "spot" and self.gpu_type not in self.spot_usd_per_gpu_hour:
            raise ValueError(f"cost.price_class is spot but gpu_type {self.gpu_type!r} has no "
                             f"spot price; known: {sorted(self.spot_usd_per_gpu_hour)}")
        for name, rate in {**self.usd_per_gpu_hour, **{
                f"spot.{k}": v for k, v in self.spot_usd_per_gpu_hour.items()}}.items():
            if rate < 0:
                raise ValueError(f"usd_per_gpu_hour.{name} must be >= 0, got {rate}")
        if self.spot_preemptions_per_hour < 0 or self.restart_s < 0:
            raise ValueError("cost.spot_preemptions_per_hour and cost.restart_s must be >= 0")

    @property
    def rate(self) -> float:
        """The rate the run is charged at (its price class)."""
        return self.rate_of(self.gpu_type, self.price_class)

    def rate_of(self, device_type: str, price_class: str = "on_demand") -> float:
        """$/device-hour of a device in a price class; a device with no spot price (the cpu
        pool) is charged on-demand."""
        if price_class == "spot" and device_type in self.spot_usd_per_gpu_hour:
            return self.spot_usd_per_gpu_hour[device_type]
        return self.usd_per_gpu_hour.get(device_type, 0.0)


PRICE_CLASSES = ("on_demand", "spot")


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
    price_class: str = "on_demand"


def price(cost: CostParams, seconds: float, devices: int, on_gpu: bool = True,
          price_class: str | None = None) -> Price:
    """`devices` held for `seconds`: GPU work at cost.gpu_type's rate per device in the price
    class (cost.price_class unless given); CPU work (on_gpu False, or a cpu price list) as one
    machine, however many processes shared it."""
    device_type = cost.gpu_type if on_gpu else "cpu"
    devices = devices if device_type != "cpu" else 1
    price_class = price_class or cost.price_class
    rate = cost.rate_of(device_type, price_class)
    return Price(seconds, devices, device_type, gpu_hours(seconds, devices),
                 cost_usd(seconds, devices, rate), price_class)


def attempts_bill(cost: CostParams, records: list[dict[str, Any]]) -> dict[str, float | int]:
    """A stage's attempts (tasks/common/attempts.py records) priced one by one at the class
    each ran in: the spend per class, the preemptions, and the work they lost (the steps after
    the checkpoint each resumed from, at the attempt's step time) in device-hours and dollars."""
    bill: dict[str, float | int] = {
        "attempts": len(records), "preemptions": 0, "lost_steps": 0, "lost_device_hours": 0.0,
        "lost_cost_usd": 0.0, "device_hours": 0.0, "cost_usd": 0.0,
        **{f"{c}_cost_usd": 0.0 for c in PRICE_CLASSES},
        **{f"{c}_device_hours": 0.0 for c in PRICE_CLASSES}}
    for record in records:
        klass = record.get("price_class", "on_demand")  # records before classes: on-demand
        spent = price(cost, float(record["seconds"]), int(record["devices"]), price_class=klass)
        bill["device_hours"] += spent.device_hours
        bill["cost_usd"] += spent.cost_usd
        bill[f"{klass}_device_hours"] += spent.device_hours
        bill[f"{klass}_cost_usd"] += spent.cost_usd
        if record.get("status") == "preempted":
            bill["preemptions"] += 1
            lost = price(cost, float(record.get("lost_seconds", 0.0)), int(record["devices"]),
                         price_class=klass)
            bill["lost_steps"] += int(record.get("lost_steps", 0))
            bill["lost_device_hours"] += lost.device_hours
            bill["lost_cost_usd"] += lost.cost_usd
    return bill


def expected_preemption_loss(cost: CostParams, hours: float, checkpoint_every_h: float
                             ) -> dict[str, float]:
    """What preemptions are expected to cost a stage of `hours` wall time on spot: at
    cost.spot_preemptions_per_hour, each loses on average half a checkpoint interval of work
    plus the restart (cost.restart_s). Returned as the preemptions expected and the wall hours
    lost, a fraction of `hours` to add to its device-hours."""
    per_preemption_h = checkpoint_every_h / 2.0 + cost.restart_s / 3600.0
    preemptions = hours * cost.spot_preemptions_per_hour
    return {"preemptions": preemptions, "hours_per_preemption": per_preemption_h,
            "lost_hours": preemptions * per_preemption_h}


def attempts_price(cost: CostParams, records: list[dict[str, Any]]) -> Price:
    """Attempts of a stage (tasks/common/attempts.py) priced by the one rule and summed: each
    attempt's held seconds x its devices x the rate. The train step logs it per stage and the
    report adds it up per run."""
    prices = [price(cost, float(r["seconds"]), int(r["devices"]),
                    price_class=r.get("price_class", "on_demand")) for r in records]
    classes = {p.price_class for p in prices} or {cost.price_class}
    return Price(seconds=sum(p.seconds for p in prices),
                 devices=max((p.devices for p in prices), default=1),
                 device_type=prices[0].device_type if prices else cost.gpu_type,
                 device_hours=sum(p.device_hours for p in prices),
                 cost_usd=sum(p.cost_usd for p in prices),
                 price_class=classes.pop() if len(classes) == 1 else "mixed")
