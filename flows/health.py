"""A one-task flow that proves the orchestration path end to end: server, pool, worker, S3."""

from __future__ import annotations

from prefect import flow, task

from infra import s3


@task(retries=2, retry_delay_seconds=2)
def write_marker(uri: str, text: str) -> str:
    s3.put_bytes(uri, text.encode())
    return uri


@flow(name="health")
def health(uri: str = "s3://micro-budget/health/marker.txt", text: str = "ok") -> str:
    """Write `text` to `uri` from a worker; the caller reads it back."""
    return write_marker(uri, text)
