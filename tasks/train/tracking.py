"""MLflow for a training stage: a run nested under the pipeline run, logged in batches.

The training loop hands its metrics to `StageRun.log`, which only queues them: a background
thread sends them with `log_batch` every 30 s, so a step never waits on the tracking
server (style.md, 12). The queue is flushed when the stage finishes and, through atexit, when
the process ends without finishing (the run is then marked FAILED, its metrics kept). The
stage's price is logged by the process that held the devices (tasks/train/step.py), which
alone knows how long it held them.
"""

from __future__ import annotations

import atexit
import io
import queue
import sys
import threading
import time
from dataclasses import asdict
from typing import Any

import torch
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_METRICS_PER_BATCH

from infra import tracking
from infra.config import flatten, to_dict
from infra.tracking import experiment_id, log_batched, metric_entities, param_entities, tag_entities
from tasks.common.cost import attempts_bill, attempts_price
from tasks.params import Params

_TICK = object()  # the queue's "interval over" marker


class MetricQueue:
    """Metrics queued by the caller and sent by one background thread in log_batch calls,
    at most every `every_s` seconds (sooner when a batch fills)."""

    def __init__(self, client: MlflowClient, run_id: str, every_s: float = 30.0) -> None:
        self.client, self.run_id, self.every_s = client, run_id, every_s
        self._queue: queue.Queue[Metric | threading.Event | None] = queue.Queue()
        self._thread = threading.Thread(target=self._drain, name="mlflow-metrics", daemon=True)
        self._thread.start()

    def put(self, metrics: dict[str, float], step: int) -> None:
        for metric in metric_entities(metrics, step):
            self._queue.put(metric)

    def flush(self) -> None:
        """Send everything queued so far; returns once the server has it (or refused it)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _drain(self) -> None:
        pending: list[Metric] = []
        deadline = time.monotonic() + self.every_s
        while True:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                item = _TICK  # the interval ran out: send what is pending
            if isinstance(item, Metric):
                pending.append(item)
                if len(pending) < MAX_METRICS_PER_BATCH:
                    continue
            self._send(pending)
            pending = []
            deadline = time.monotonic() + self.every_s
            if isinstance(item, threading.Event):
                item.set()
            elif item is None:
                return

    def _send(self, pending: list[Metric]) -> None:
        if not pending:
            return
        try:
            log_batched(self.client, self.run_id, metrics=pending)
        except Exception as err:  # noqa: BLE001 - a tracking outage must not stop training
            print(f"warning: {len(pending)} metric values of MLflow run {self.run_id} were "
                  f"not logged: {err}", file=sys.stderr, flush=True)


class StageRun:
    def __init__(self, params: Params, stage: str, parent_run_id: str | None,
                 every_s: float = 30.0) -> None:
        self.client = tracking.client()
        tags = {"kind": "train-stage", "stage": stage, "profile": params.profile}
        if parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run = self.client.create_run(experiment_id(self.client), run_name=f"train-{stage}",
                                     tags=tags)
        self.run_id = run.info.run_id
        stage_params = to_dict(params.train.stage(stage))
        train = {k: v for k, v in to_dict(params.train).items() if k != "stages"}
        log_batched(self.client, self.run_id,
                    params=param_entities(flatten({"stage": stage_params, "train": train})))
        self.metrics = MetricQueue(self.client, self.run_id, every_s)
        self.finished = False
        atexit.register(self.close)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """The training loop's logger: queues, never waits on the server."""
        self.metrics.put(metrics, step)

    def finish(self, params: Params, summary: dict[str, Any], grid_png: bytes | None) -> None:
        self.metrics.flush()
        log_batched(self.client, self.run_id,
                    metrics=metric_entities({"loop_seconds": summary["seconds"]}),
                    tags=[RunTag("checkpoint_uri", summary["checkpoint"])])
        if grid_png:
            self.client.log_image(self.run_id, _png_array(grid_png), "samples_grid.png")
        self.client.set_terminated(self.run_id)
        self.finished = True

    def close(self) -> None:
        """At process exit: send what is queued; a run not finished by then ends FAILED."""
        self.metrics.close()
        if not self.finished:
            self.client.set_terminated(self.run_id, status="FAILED")
            self.finished = True
        atexit.unregister(self.close)


def log_stage_cost(params: Params, stage: str, result: dict[str, Any]) -> None:
    """What the stage cost, on its own MLflow run and in its summary: this attempt (the
    devices' held wall time, start-up and uploads included, not the loop's seconds only) and
    every attempt at the same checkpoint folder (failed, killed, preempted and cached reruns
    included), with the preemptions, the work they lost and the spend per price class."""
    from tasks.common import attempts
    from tasks.train import keys

    records = attempts.read(keys.stage_prefix(params, stage))
    ids = {node["attempt"] for node in result["nodes"]}
    this = attempts_price(params.cost, [r for r in records if r["id"] in ids])
    every = attempts_price(params.cost, records)
    bill = attempts_bill(params.cost, records)
    result["cost"] = {"attempt": asdict(this), "all_attempts": asdict(every),
                      "attempts": len(records),
                      "failed_attempts": sum(r["status"] != "finished" for r in records),
                      "bill": bill}
    run_id = result.get("mlflow_run_id")
    if run_id:
        log_batched(tracking.client(), run_id, metrics=metric_entities({
            "device_seconds": this.seconds, "devices": this.devices,
            "gpu_hours": this.device_hours, "cost_usd": this.cost_usd,
            "gpu_hours_all_attempts": every.device_hours,
            "cost_usd_all_attempts": every.cost_usd, "attempts": len(records),
            "preemptions": bill["preemptions"], "lost_steps": bill["lost_steps"],
            "lost_device_hours": bill["lost_device_hours"], "lost_cost_usd": bill["lost_cost_usd"],
            "spot_cost_usd": bill["spot_cost_usd"],
            "on_demand_cost_usd": bill["on_demand_cost_usd"]}),
            tags=tag_entities({"device_type": this.device_type,
                               "price_class": this.price_class}))


def _png_array(data: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@torch.no_grad()
def sample_grid(params: Params, ema_model: torch.nn.Module) -> bytes:
    """Fixed prompts through the EMA weights, the Heun sampler and the VAE decoder, as a PNG
    with each tile labelled by its prompt."""
    from model.edm import EDMPrecond, edm_heun_sampler, sample_noise
    from tasks.common.generation import decode, load_encoders
    from tasks.common.grid import grid_png

    device = next(ema_model.parameters()).device
    encoders = load_encoders(params, device)
    prompts = list(params.train.sample_prompts)
    text = encoders.encode_text(prompts).to(device)
    cfg = ema_model.config
    noise = sample_noise((len(prompts), cfg.latent_channels, cfg.input_size, cfg.input_size),
                         seed=params.train.seed, device=device)
    latents = edm_heun_sampler(EDMPrecond(ema_model.eval()), noise, text,
                               num_steps=params.train.sample_steps)
    return grid_png(list(decode(encoders.vae, latents)), prompts)
