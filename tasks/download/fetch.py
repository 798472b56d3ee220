"""Reading source files and images from http(s), s3 or local paths, with failure reasons.

A failure reason is a short stable label (`http_404`, `timeout`, `connection_error`, ...) so that
the download statistics can be summed across shards and compared across runs.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from infra import s3
from infra.settings import REPO_ROOT, mirror_url

USER_AGENT = "micro-budget-download/1.0 (+https://github.com/rom1504/img2dataset)"
RETRYABLE_HTTP = {429, 500, 502, 503, 504}


class FetchError(Exception):
    """A source could not be read; `reason` is the label counted in the statistics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def resolve(location: str) -> str:
    """Expand `{mirror}`; a location without a scheme is a path relative to the repository."""
    location = location.replace("{mirror}", mirror_url().rstrip("/"))
    if urlparse(location).scheme in ("http", "https", "s3"):
        return location
    path = Path(location)
    return str(path if path.is_absolute() else REPO_ROOT / path)


def _request(url: str) -> urllib.request.Request:
    headers = {"User-Agent": USER_AGENT}
    token = os.environ.get("HF_TOKEN")
    # Gated Hugging Face datasets (JourneyDB) need the user's token; other hosts never see it.
    if token and urlparse(url).hostname == "huggingface.co":
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(url, headers=headers)


def reason_from_exception(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"http_{err.code}"
    if isinstance(err, urllib.error.URLError):
        return "timeout" if isinstance(err.reason, (socket.timeout, TimeoutError)) \
            else "connection_error"
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(err, FileNotFoundError):
        return "not_found"
    return "connection_error"


def reason_from_message(message: str) -> str:
    """Map img2dataset's error_message strings onto the same labels."""
    text = message.lower()
    if text.startswith("http error "):
        code = text.split()[2].rstrip(":")
        return f"http_{code}" if code.isdigit() else "http_error"
    if "timed out" in text:
        return "timeout"
    if "x-robots-tag" in text:
        return "disallowed_by_site"
    if "refused" in text or "urlopen error" in text or "connection" in text:
        return "connection_error"
    return "other"


def read_bytes(location: str, timeout_s: float) -> bytes:
    """The whole content of a source file (annotations, link lists, metadata)."""
    url = resolve(location)
    try:
        if url.startswith("s3://"):
            return s3.get_bytes(url)
        if urlparse(url).scheme in ("http", "https"):
            with urllib.request.urlopen(_request(url), timeout=timeout_s) as resp:
                return resp.read()
        return Path(url).read_bytes()
    except (OSError, http.client.HTTPException) as err:
        raise FetchError(reason_from_exception(err), f"{url}: {err}") from err


def fetch_to_file(location: str, dest: Path, timeout_s: float) -> None:
    """Copy a (large) source file to `dest`; a body shorter than its Content-Length is an error.

    The length check separates a connection cut mid-transfer (worth a retry) from an archive
    that is itself damaged (counted, not retried).
    """
    url = resolve(location)
    try:
        if url.startswith("s3://"):
            s3.download_file(url, dest)
            return
        if urlparse(url).scheme not in ("http", "https"):
            shutil.copyfile(url, dest)
            return
        with urllib.request.urlopen(_request(url), timeout=timeout_s) as resp, \
                open(dest, "wb") as out:
            expected = resp.headers.get("Content-Length")
            shutil.copyfileobj(resp, out, 1 << 20)
    except (OSError, http.client.HTTPException) as err:
        raise FetchError(reason_from_exception(err), f"{url}: {err}") from err
    if expected is not None and dest.stat().st_size != int(expected):
        raise FetchError("incomplete_transfer",
                         f"{url}: got {dest.stat().st_size} of {expected} bytes")


def _transient(err: BaseException) -> bool:
    if isinstance(err, urllib.error.HTTPError):
        return err.code in RETRYABLE_HTTP
    return True


def fetch_image(url: str, timeout_s: float, retries: int) -> bytes:
    """Image bytes from a URL; 5xx, 429 and connection errors are retried with a short backoff."""
    attempt = 0
    while True:
        try:
            with urllib.request.urlopen(_request(url), timeout=timeout_s) as resp:
                return resp.read()
        except ValueError as err:
            raise FetchError("bad_url", repr(url)) from err
        except (OSError, http.client.HTTPException) as err:
            if attempt >= retries or not _transient(err):
                raise FetchError(reason_from_exception(err), f"{url}: {err}") from err
        attempt += 1
        time.sleep(0.2 * attempt)
