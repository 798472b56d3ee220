"""S3 access through boto3: the only module that builds S3 clients.

Objects are addressed by `s3://bucket/key` URIs everywhere else in the code base. A PUT is atomic
in S3 (readers see the old object or the whole new one), which is what shard commits rely on.
"""

from __future__ import annotations

import functools
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import boto3
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (ClientError, ConnectionClosedError, ConnectTimeoutError,
                                 EndpointConnectionError, ReadTimeoutError)

from infra import retry
from infra.settings import S3Settings, s3_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Multipart above 64 MiB keeps part counts small for multi-GB checkpoints.
TRANSFER = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=64 * 2**20)


def split_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def make_client(settings: S3Settings):
    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        region_name=settings.region,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 5, "mode": "standard"},
        ),
    )


# botocore's own retries (above) cover only a few seconds; a store that is down or restarting
# (a SeaweedFS restart, a network blip, an S3 503) is waited out with retry.s3_outage().
TRANSIENT = (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError,
             ReadTimeoutError, ConnectionError)
RETRIED = {"attempts": 0}  # retries made in this process, for logs and tests


def _transient(err: BaseException) -> bool:
    if isinstance(err, TRANSIENT):
        return True
    if isinstance(err, (S3UploadFailedError, RetriesExceededError)):
        # The transfer manager wraps the cause into its message: retry lost connections and
        # server errors, not refusals (AccessDenied, NoSuchBucket).
        text = str(err).lower()
        return any(m in text for m in ("connect", "timed out", "timeout", "(500)", "(503)",
                                       "internalerror", "serviceunavailable", "slowdown"))
    if isinstance(err, ClientError):
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or err.response.get("Error", {}).get("Code") == "SlowDown"
    return False


def _retry_after(err: BaseException) -> float | None:
    if isinstance(err, ClientError):
        headers = err.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        return retry.retry_after_s(headers.get("retry-after"))
    return None


def outage_tolerant(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> T:
        def note(attempt: int, err: BaseException, wait: float) -> None:
            RETRIED["attempts"] += 1
            log.warning("S3 %s failed (%s); retrying in %.1f s", fn.__name__, err, wait)

        return retry.call(lambda: fn(*args, **kwargs), retry.s3_outage(), _transient,
                          _retry_after, note)
    return call


@lru_cache(maxsize=4)
def client(read_only: bool = False):
    """Cached client for the configured endpoint (read-write unless read_only)."""
    return make_client(s3_settings(read_only=read_only))


def ensure_bucket(name: str, s3=None) -> None:
    s3 = s3 or client()
    try:
        s3.head_bucket(Bucket=name)
    except ClientError:
        s3.create_bucket(Bucket=name)


@outage_tolerant
def exists(uri: str) -> bool:
    bucket, key = split_uri(uri)
    try:
        client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


@outage_tolerant
def put_bytes(uri: str, data: bytes) -> None:
    bucket, key = split_uri(uri)
    client().put_object(Bucket=bucket, Key=key, Body=data)


@outage_tolerant
def get_bytes(uri: str) -> bytes:
    bucket, key = split_uri(uri)
    return client().get_object(Bucket=bucket, Key=key)["Body"].read()


def put_json(uri: str, obj: Any) -> None:
    put_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


def get_json(uri: str) -> Any:
    return json.loads(get_bytes(uri))


@outage_tolerant
def upload_file(path: Path | str, uri: str) -> None:
    bucket, key = split_uri(uri)
    client().upload_file(str(path), bucket, key, Config=TRANSFER)


@outage_tolerant
def download_file(uri: str, path: Path | str) -> None:
    bucket, key = split_uri(uri)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    client().download_file(bucket, key, str(path), Config=TRANSFER)


def list_uris(prefix_uri: str) -> Iterator[str]:
    """All object URIs under a prefix, in key order (each page fetched outage-tolerantly)."""
    bucket, prefix = split_uri(prefix_uri)
    token = None
    while True:
        page = _list_page(bucket, prefix, token)
        for obj in page.get("Contents", []):
            yield f"s3://{bucket}/{obj['Key']}"
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return


@outage_tolerant
def _list_page(bucket: str, prefix: str, token: str | None) -> dict[str, Any]:
    kwargs = {"Bucket": bucket, "Prefix": prefix}
    if token:
        kwargs["ContinuationToken"] = token
    return client().list_objects_v2(**kwargs)


@outage_tolerant
def delete(uri: str) -> None:
    bucket, key = split_uri(uri)
    client().delete_object(Bucket=bucket, Key=key)
