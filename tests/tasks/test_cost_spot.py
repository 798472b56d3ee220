"""The spot bill's arithmetic (issue 34): each attempt priced at its own class, preemptions and
the work they lost counted and priced, and the expected loss of a checkpoint interval."""

from __future__ import annotations

import dataclasses

import pytest

from tasks.common.cost import CostParams, attempts_bill, expected_preemption_loss, price
from tasks.params import load_params


def _h100(price_class: str = "on_demand") -> CostParams:
    return CostParams(gpu_type="H100", usd_per_gpu_hour={"cpu": 0.1, "H100": 4.0},
                      spot_usd_per_gpu_hour={"H100": 2.0}, price_class=price_class,
                      spot_preemptions_per_hour=0.5, restart_s=360.0)


def test_the_price_class_picks_the_rate_and_cpu_work_without_a_spot_price_pays_on_demand():
    spot = _h100("spot")
    assert price(spot, 3600.0, 8).cost_usd == pytest.approx(8 * 2.0)
    assert price(spot, 3600.0, 8).price_class == "spot" and spot.rate == 2.0
    assert price(spot, 3600.0, 8, price_class="on_demand").cost_usd == pytest.approx(8 * 4.0)
    assert price(_h100(), 1800.0, 2).cost_usd == pytest.approx(4.0)
    assert price(spot, 3600.0, 8, on_gpu=False).cost_usd == pytest.approx(0.1)  # one machine


def test_the_cost_config_refuses_an_unknown_class_and_spot_without_a_spot_price():
    with pytest.raises(ValueError, match="price_class must be one of"):
        dataclasses.replace(_h100(), price_class="reserved")
    with pytest.raises(ValueError, match="no spot price"):
        dataclasses.replace(_h100(), spot_usd_per_gpu_hour={}, price_class="spot")
    with pytest.raises(ValueError, match="must be >= 0"):
        dataclasses.replace(_h100(), spot_usd_per_gpu_hour={"H100": -1.0})
    for profile in ("demo", "full"):  # params.yaml prices spot for the planned device
        cost = load_params(profile=profile).cost
        assert 0 < cost.rate_of(cost.gpu_type, "spot") < cost.rate_of(cost.gpu_type)


def test_attempts_bill_prices_each_attempt_at_its_class_and_the_lost_work():
    records = [  # 8 GPUs preempted on spot after 1 h, 0.25 h of it lost; then 2 h on-demand
        {"seconds": 3600.0, "devices": 8, "price_class": "spot", "status": "preempted",
         "lost_steps": 120, "lost_seconds": 900.0},
        {"seconds": 600.0, "devices": 8, "price_class": "spot", "status": "failed"},
        {"seconds": 7200.0, "devices": 8, "status": "finished"},  # an old record: on-demand
    ]
    bill = attempts_bill(_h100(), records)
    assert bill["attempts"] == 3 and bill["preemptions"] == 1 and bill["lost_steps"] == 120
    assert bill["spot_device_hours"] == pytest.approx(8 * (1 + 1 / 6))
    assert bill["spot_cost_usd"] == pytest.approx(8 * (1 + 1 / 6) * 2.0)
    assert bill["on_demand_cost_usd"] == pytest.approx(8 * 2 * 4.0)
    assert bill["cost_usd"] == pytest.approx(bill["spot_cost_usd"] + bill["on_demand_cost_usd"])
    assert bill["lost_device_hours"] == pytest.approx(8 * 0.25)
    assert bill["lost_cost_usd"] == pytest.approx(8 * 0.25 * 2.0)  # at the class it ran in


def test_expected_loss_is_half_a_checkpoint_interval_plus_the_restart_per_preemption():
    loss = expected_preemption_loss(_h100(), hours=10.0, checkpoint_every_h=0.5)
    assert loss["preemptions"] == pytest.approx(5.0)  # 0.5 per hour for 10 h
    assert loss["hours_per_preemption"] == pytest.approx(0.25 + 0.1)  # 15 min + 6 min restart
    assert loss["lost_hours"] == pytest.approx(5 * 0.35)
    # A shorter interval loses less per preemption; the restart stays.
    assert expected_preemption_loss(_h100(), 10.0, 0.1)["lost_hours"] == pytest.approx(5 * 0.15)
