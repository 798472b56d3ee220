"""Every attempt at a piece of work, recorded next to its outputs so that its cost is never lost.

    <prefix>/attempts/<id>.json  {id, host, node_rank, devices, price_class, started,
                                  seconds, device_hours, status[, lost_steps, lost_seconds]}

`recorded` writes the record when the attempt starts, rewrites its held seconds every
`heartbeat_s` while it runs, and marks it finished, failed or preempted (`preempted`: with the
work it lost, the steps after the checkpoint its successor resumes from) when it ends. An
attempt that is killed outright (SIGKILL, a lost machine) keeps status "running" and the
seconds of its last heartbeat: priced up to then. The prefix is the outputs' own, keyed as they are (a training
stage's checkpoint folder), so every attempt that worked towards the same outputs, the cached
rerun included, is found in one listing (`read`).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from infra import s3

FOLDER = "attempts"


def folder(prefix: str) -> str:
    return s3.join(prefix, FOLDER)


@contextmanager
def recorded(prefix: str, devices: int, node_rank: int = 0, heartbeat_s: float = 30.0,
             price_class: str = "on_demand") -> Iterator[dict[str, Any]]:
    """Record the attempt run inside the block; yields its record (status set on exit)."""
    record = {"id": uuid.uuid4().hex[:12], "host": socket.gethostname(), "node_rank": node_rank,
              "devices": devices, "price_class": price_class, "started": time.time(),
              "seconds": 0.0, "device_hours": 0.0, "status": "running"}
    uri = s3.join(folder(prefix), f"{record['id']}.json")
    started = time.monotonic()
    stop = threading.Event()

    def write(status: str) -> None:
        seconds = round(time.monotonic() - started, 3)
        record.update(seconds=seconds, device_hours=seconds * devices / 3600.0, status=status)
        s3.put_json(uri, record)

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            try:
                write("running")
            except Exception:  # noqa: BLE001 - a missed heartbeat only under-prices by one
                pass

    write("running")
    thread = threading.Thread(target=beat, name="attempt-heartbeat", daemon=True)
    thread.start()
    status = "failed"
    try:
        yield record
        status = "finished"
    finally:
        stop.set()
        thread.join()
        write("preempted" if status == "failed" and "lost_steps" in record else status)


def preempted(record: dict[str, Any], lost_steps: int, lost_seconds: float) -> None:
    """Mark the attempt in `record` (inside `recorded`) preempted, with the work it lost."""
    record.update(lost_steps=int(lost_steps), lost_seconds=float(lost_seconds))


def read(prefix: str) -> list[dict[str, Any]]:
    """Every attempt recorded under `prefix`, oldest first."""
    uris = [u for u in s3.list_uris(folder(prefix) + "/") if u.endswith(".json")]
    return sorted((s3.get_json(u) for u in uris), key=lambda r: r["started"])

