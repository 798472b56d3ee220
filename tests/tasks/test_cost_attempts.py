"""Figures that add up: one pricing rule (device wall time x devices used x price) on every
path, every attempt priced (failed and killed ones included), the model's cost beside this
run's spend, and device memory that is GPU memory or says it is the host's."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from infra import s3
from infra.settings import REPO_ROOT
from tasks.check import memory_limit
from tasks.common import attempts
from tasks.common.cost import price
from tasks.common.cost import attempts_price
from tasks.common.driver import Local
from tasks.common.memory import describe, device_memory
from tasks.params import load_params
from tasks.report.dvc_metrics import flat_metrics
from tasks.report.ledger import envelope, ledger, totals
from tasks.report.step import model_prices, stage_prices
from tasks.train import keys
from tasks.train.step import run_stage, summarize
from tests.tasks.test_train import _latents, _params


def _full_priced():
    params = load_params(profile="full")
    return params.cost


def test_caption_and_encode_are_priced_on_the_devices_that_ran():
    cost = _full_priced()  # H100 at $3.75
    rows = ledger([envelope("caption", {"coco": {}, "gpus": 3}, 3600.0),
                   envelope("encode", {"coco": {}}, 3600.0),
                   envelope("download", {"gpus": 8}, 3600.0)], cost)
    assert [(r.devices, r.device_type, r.cost_usd) for r in rows] == [
        (3, "H100", pytest.approx(3 * 3.75)), (1, "H100", pytest.approx(3.75)),
        (1, "cpu", 0.0)]
    demo = load_params(profile="demo").cost  # a CPU machine: one machine however many procs
    assert ledger([envelope("caption", {"gpus": 2}, 3600.0)], demo)[0].cost_usd == \
        pytest.approx(0.08)


def test_an_attempt_is_recorded_failed_killed_or_finished(s3_prefix):
    with pytest.raises(RuntimeError):
        with attempts.recorded(s3_prefix, devices=2):
            time.sleep(0.3)
            raise RuntimeError("the stage died")
    with attempts.recorded(s3_prefix, devices=2, heartbeat_s=0.1) as record:
        time.sleep(0.3)
    # A killed process never reaches its end: its heartbeat prices it up to then.
    code = ("import time; from tasks.common import attempts\n"
            f"with attempts.recorded({s3_prefix!r}, devices=2, heartbeat_s=0.2):\n"
            "    time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT)
    deadline = time.monotonic() + 60
    while not any(r["seconds"] > 0 for r in attempts.read(s3_prefix) if r["status"] == "running"):
        assert time.monotonic() < deadline, "the killed attempt never beat"
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    found = attempts.read(s3_prefix)
    assert [r["status"] for r in found] == ["failed", "finished", "running"]
    assert all(r["seconds"] >= 0.2 and r["devices"] == 2 for r in found)
    assert found[1]["id"] == record["id"]
    cost = _full_priced()
    total = attempts_price(load_params(profile="full").cost, found)
    assert total.cost_usd == pytest.approx(
        sum(price(cost, r["seconds"], 2).cost_usd for r in found))
    assert total.cost_usd == pytest.approx(sum(r["seconds"] for r in found) * 2 * 3.75 / 3600)


@pytest.fixture(scope="module")
def tiny_encoders(tmp_path_factory) -> dict[str, str]:
    """Random-init encoders the stage's sample grid decodes with (the demo's VAE is trained
    by `python -m tasks.models`, minutes of CPU; the price does not depend on it)."""
    from tasks.encode.tiny import save_tiny_text_encoder, save_tiny_vae

    root = tmp_path_factory.mktemp("encoders")
    return {"vae": str(save_tiny_vae(root / "vae")),
            "text_encoder": str(save_tiny_text_encoder(root / "text"))}


def test_a_failed_attempt_and_a_cached_rerun_add_up_to_the_model_cost(s3_prefix,
                                                                         mlflow_service,
                                                                         tiny_encoders):
    params = _params(s3_prefix, steps=(8, 3))
    params = dataclasses.replace(
        params, train=dataclasses.replace(params.train, stages=params.train.stages[:1]),
        encode=dataclasses.replace(params.encode, **tiny_encoders))
    _latents(params)
    stage = params.train.stages[0].name
    prefix = keys.stage_prefix(params, stage)
    with pytest.raises(RuntimeError):  # an attempt that died before finishing
        with attempts.recorded(prefix, devices=1):
            time.sleep(0.5)
            raise RuntimeError("killed")

    first = run_stage(params, stage)
    rerun = run_stage(params, stage)  # the checkpoint is complete: a cached rerun
    assert rerun["steps"] == first["steps"] and rerun["held_seconds"] < first["held_seconds"]

    # The stage's MLflow run prices its attempt's held device time, not the loop's seconds.
    run = MlflowClient().get_run(first["mlflow_run_id"]).data.metrics
    held = price(params.cost, first["held_seconds"], 1)
    assert run["device_seconds"] == pytest.approx(first["held_seconds"], abs=0.01)
    assert run["device_seconds"] > first["seconds"]
    assert run["cost_usd"] == pytest.approx(held.cost_usd, rel=1e-3)
    assert run["attempts"] == 2  # the failed one and this one

    envelopes = [envelope("train", summarize({stage: rerun}), rerun["held_seconds"])]
    stages = stage_prices(params, envelopes)
    rows = ledger(envelopes, params.cost, model_prices(stages))
    metrics = flat_metrics(params, envelopes, rows, stages)
    records = attempts.read(prefix)
    assert [r["status"] for r in records] == ["failed", "finished", "finished"]
    every = sum(price(params.cost, r["seconds"], 1).cost_usd for r in records)
    spent = price(params.cost, rerun["held_seconds"], 1).cost_usd
    assert totals(rows)["model_cost_usd"] == pytest.approx(every)
    assert totals(rows)["cost_usd"] == pytest.approx(spent)
    assert metrics["cost_usd"] == round(every, 4) and metrics["run_cost_usd"] == round(spent, 4)
    assert metrics[f"{stage}_cost_usd"] == round(every, 4)
    assert every > spent
    # The node record holds device memory, named for what it is on a CPU-only machine.
    assert [m["name"] for m in first["nodes"][0]["device_memory"]] == \
        [m["name"] for m in device_memory()]
    # ... and the ledger reads it from there.
    assert rows[0].device_memory == describe(first["nodes"][0]["device_memory"])
    assert rows[0].device_memory.startswith(("cpu: host memory", f"{len(device_memory())} x "))


def test_device_memory_is_the_gpus_own_or_says_it_is_the_hosts():
    import torch

    memory = device_memory()
    assert memory and all(m["total_gib"] > 0 for m in memory)
    if torch.cuda.is_available():
        assert [m["name"] for m in memory] == [torch.cuda.get_device_properties(i).name
                                              for i in range(torch.cuda.device_count())]
        return
    assert memory[0]["device"] == "cpu" and memory[0]["name"] == "cpu: host memory"
    params = load_params(profile="full")
    assert memory_limit(params, memory) == (params.train.gpu_memory_gib,
                                           "train.gpu_memory_gib")
    small = [{"device": f"cuda:{i}", "name": "NVIDIA A10", "total_gib": 22.0, "free_gib": 21.0}
             for i in range(2)]
    limit, source = memory_limit(params, small)
    assert limit == 22.0 and "2 x NVIDIA A10" in source and "measured" in source


def _data_params(demo_params, s3_prefix, tiny_encoders):
    """The demo's CC3M subset alone, downloaded and encoded under this test's prefix, priced at
    $1 a device-second (GPU steps) and $0.1 a second (CPU) so that seconds show in 4 decimals."""
    from infra.s3 import split_uri
    from tasks.download.config import DATASETS

    base = demo_params()
    params = demo_params(**{name: dataclasses.replace(base.download.source(name),
                                                      enabled=name == "cc3m")
                            for name in DATASETS})
    _, key = split_uri(s3_prefix)
    return dataclasses.replace(
        params, storage=dataclasses.replace(params.storage, latents_prefix=f"{key}/latents"),
        encode=dataclasses.replace(params.encode, datasets=("cc3m",), **tiny_encoders),
        cost=dataclasses.replace(params.cost, gpu_type="H100",
                                 usd_per_gpu_hour={"cpu": 360.0, "H100": 3600.0}))


def test_a_failed_encode_attempt_adds_up_and_a_cached_rerun_keeps_the_model_cost(
        demo_params, s3_prefix, tiny_encoders, mlflow_service):
    """Download and encode through the bracket both drivers call (tasks/attempt.py): an encode
    attempt that fails on its device is priced and added to the one that finishes, in the
    report's cost_usd; a rerun that finds every output in place reports that same model cost
    (plus its own attempts, found under the same keys) and only its small spend as run_cost_usd."""
    from tasks.attempt import attempt_prefix, run_attempt
    from tasks.download import step as download_step
    from tasks.encode import step as encode_step
    from tasks.report.step import report
    from tasks.report.tracking import start_pipeline_run

    params = _data_params(demo_params, s3_prefix, tiny_encoders)
    # cuda:99 fails on every machine; the device is how latents are computed, not what they
    # are, so the failed attempt is keyed as the finishing one.
    broken = dataclasses.replace(params, encode=dataclasses.replace(params.encode,
                                                                    device="cuda:99"))

    def run_steps():
        return [run_attempt(params, step.__name__.split(".")[1],
                            lambda s=step: s.run(params, Local()))
                for step in (download_step, encode_step)]

    def reported(envelopes):
        result = report(params, envelopes, start_pipeline_run(params, "cost-attempts-test"))
        return result["flat_metrics"], MlflowClient().get_run(result["mlflow_run_id"]).data

    def every_attempt():
        dl, enc = (attempts.read(attempt_prefix(params, s)) for s in ("download", "encode"))
        return (sum(price(params.cost, r["seconds"], 1, on_gpu=False).cost_usd for r in dl)
                + sum(price(params.cost, r["seconds"], r["devices"]).cost_usd for r in enc))

    def spent(envelopes):
        return sum(price(params.cost, e["seconds"], int(e["result"].get("gpus", 1)),
                         on_gpu=e["step"] == "encode").cost_usd for e in envelopes)

    download_env = run_attempt(params, "download", lambda: download_step.run(params, Local()))
    assert attempt_prefix(broken, "encode") == attempt_prefix(params, "encode")
    with pytest.raises(RuntimeError, match="cuda"):
        run_attempt(broken, "encode", lambda: encode_step.run(broken, Local()))
    first = [download_env,
             run_attempt(params, "encode", lambda: encode_step.run(params, Local()))]
    assert first[1]["result"]["cc3m"]["samples_encoded_this_run"] > 0
    failed, finished = attempts.read(attempt_prefix(params, "encode"))
    assert (failed["status"], finished["status"]) == ("failed", "finished")
    assert finished["seconds"] == first[1]["seconds"] and failed["seconds"] > 0

    metrics, run = reported(first)
    model = every_attempt()
    assert metrics["cost_usd"] == round(model, 4) and run.metrics["model_cost_usd"] == \
        pytest.approx(model)
    assert metrics["run_cost_usd"] == round(spent(first), 4)
    # The failed attempt is the difference: priced on its devices at the GPU rate.
    assert model - spent(first) == pytest.approx(
        price(params.cost, failed["seconds"], failed["devices"]).cost_usd)

    rerun = run_steps()
    assert rerun[0]["result"]["cc3m"]["shards_written"] == 0
    assert rerun[1]["result"]["cc3m"]["samples_encoded_this_run"] == 0
    assert [e["attempts"] for e in rerun] == [e["attempts"] for e in first]
    again, _ = reported(rerun)
    # The model's cost is what produced the outputs it reused, and the rerun's own attempts;
    # the rerun spent only those.
    assert again["cost_usd"] == round(every_attempt(), 4)
    assert again["cost_usd"] == pytest.approx(metrics["cost_usd"] + again["run_cost_usd"],
                                              abs=2e-4)
    assert again["run_cost_usd"] == round(spent(rerun), 4) < metrics["cost_usd"]
