"""Reading source files and images from http(s), s3 or local paths, with failure reasons.

A failure reason is a short stable label (`http_404`, `timeout`, `connection_error`, ...) so that
the download statistics can be summed across shards and compared across runs. The download step
fetches every source through it and the caption step reads its images back through it, so it sits
below both.

Large archives (SA-1B tars, JourneyDB tgz parts, the TextCaps image zip, DiffusionDB part zips)
go through `Transfer.fetch_archive`: the body is written to `<name>.part` in a scratch folder and a
dropped connection resumes with an HTTP Range request from the byte where it stopped; transient
failures are retried with the project's one retry policy (infra/retry.py: exponential backoff with
full jitter, 429/503 honour Retry-After), and every retry, resume and byte is counted in
`Transfer.stats`.

HTTP goes through one `requests.Session` per Transfer (one dataset's download): its adapter
keeps a pool of kept-alive connections per host, so the many small image fetches of a shard do
not each open a TCP connection.

Credentials: HF_TOKEN is sent only to the hosts in `token_hosts`. requests itself drops the
Authorization header when a redirect leaves the host, changes port or scheme (the http -> https
upgrade on default ports excepted; Session.should_strip_auth) and re-derives Cookie for the new
URL from its jar, so a token never follows a redirect to another host.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlparse

import requests
import urllib3

from infra import retry, s3
from infra.retry import RetryPolicy
from infra.settings import REPO_ROOT, mirror_url
from tasks.common.errors import OperationalError

USER_AGENT = "micro-budget-download/1.0 (+https://github.com/rom1504/img2dataset)"
RETRYABLE_HTTP = {408, 429, 500, 502, 503, 504}
DEFAULT_TOKEN_HOSTS = ("huggingface.co",)
CHUNK = 1 << 20  # bytes per read of an archive body
GIB = 1 << 30
T = TypeVar("T")


class FetchError(OperationalError):
    """A source could not be read; `reason` is the label counted in the statistics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class AccessDenied(FetchError):
    """401/403: the host wants a token or accepted terms; retrying cannot help."""

    def __init__(self, code: int, url: str) -> None:
        host = urlparse(url).hostname or url
        if code == 401:
            hint = (f"{host} needs a token: export HF_TOKEN (a read token of an account that "
                    f"accepted the dataset's terms)")
        else:
            hint = (f"{host} refused access: accept the dataset's terms on its page with the "
                    f"account of HF_TOKEN, or renew the link list if its signed links expired")
        super().__init__(f"http_{code}", f"{url}: {hint}")


class ScratchFull(FetchError):
    """The scratch folder cannot hold an archive; raised before any byte is written."""

    def __init__(self, folder: Path, need: int, free: int) -> None:
        super().__init__("scratch_full",
                         f"{folder} has {free / GIB:.1f} GiB free, an archive needs "
                         f"{need / GIB:.1f} GiB (with the reserve): point download.scratch_dir "
                         f"at a larger disk or free space")


def resolve(location: str) -> str:
    """Expand `{mirror}`; a location without a scheme is a path relative to the repository."""
    location = location.replace("{mirror}", mirror_url().rstrip("/"))
    if urlparse(location).scheme in ("http", "https", "s3"):
        return location
    path = Path(location)
    return str(path if path.is_absolute() else REPO_ROOT / path)


def headers_for(url: str, token_hosts: tuple[str, ...] = DEFAULT_TOKEN_HOSTS,
                extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our User-Agent; HF_TOKEN only when the URL's own host is a token host."""
    out = {"User-Agent": USER_AGENT, **(extra or {})}
    token = os.environ.get("HF_TOKEN")
    if token and (urlparse(url).hostname or "").lower() in token_hosts:
        out["Authorization"] = f"Bearer {token}"
    return out


def _status(err: BaseException) -> int | None:
    """The HTTP status of an error response, None for any other failure."""
    if isinstance(err, requests.HTTPError) and err.response is not None:
        return err.response.status_code
    return None


def reason_from_exception(err: BaseException) -> str:
    if isinstance(err, FetchError):
        return err.reason
    if (status := _status(err)) is not None:
        return f"http_{status}"
    # A body that stalls mid-read surfaces as a ConnectionError wrapping urllib3's timeout.
    if isinstance(err, requests.Timeout) or (
            err.args and isinstance(err.args[0], urllib3.exceptions.ReadTimeoutError)):
        return "timeout"
    if isinstance(err, TimeoutError):
        return "timeout"
    if isinstance(err, FileNotFoundError):
        return "not_found"
    if isinstance(err, (requests.exceptions.ChunkedEncodingError, IncompleteBody)):
        return "incomplete_transfer"
    return "connection_error"


class IncompleteBody(OSError):
    """The connection ended before the announced length; the next attempt resumes."""


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


@dataclass
class NetStats:
    """Thread-safe counters of the network's behaviour, reported in the download summary."""

    counts: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self.counts.items()))


def _is_transient(err: BaseException) -> bool:
    if isinstance(err, FetchError):
        return False
    if (status := _status(err)) is not None:
        return status in RETRYABLE_HTTP
    return not isinstance(err, (FileNotFoundError, ValueError))


def _retry_after(err: BaseException) -> float | None:
    if _status(err) in (429, 503):
        return retry.retry_after_s(err.response.headers.get("Retry-After"))
    return None


def parse_content_range(value: str | None) -> tuple[int, int | None]:
    """(first byte, total length or None) of `bytes a-b/total`."""
    if not value or not value.startswith("bytes "):
        raise ValueError(f"bad Content-Range {value!r}")
    span, _, total = value[6:].partition("/")
    return int(span.split("-")[0]), (int(total) if total.strip().isdigit() else None)


@dataclass
class Transfer:
    """Timeouts, retries, token hosts, the HTTP session and counters of one dataset's downloads."""

    timeout_s: float = 10.0
    image_retries: int = 2
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    token_hosts: tuple[str, ...] = DEFAULT_TOKEN_HOSTS
    reserve_bytes: int = GIB  # free space kept on the scratch disk beyond an archive
    stats: NetStats = field(default_factory=NetStats)
    sleep: Callable[[float], None] = time.sleep  # tests observe waits without sleeping
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    def get(self, url: str, headers: dict[str, str] | None = None,
            stream: bool = False) -> requests.Response:
        """A GET that follows redirects; an error status raises requests.HTTPError."""
        resp = self.session.get(url, headers=headers_for(url, self.token_hosts, headers),
                                timeout=self.timeout_s, stream=stream)
        if resp.status_code >= 400:
            resp.close()
            resp.raise_for_status()
        return resp

    def _retrying(self, fn: Callable[[], T], url: str, policy: RetryPolicy, counter: str,
                  progress: Callable[[], bool] = lambda: False, source: bool = True) -> T:
        """fn() under the retry policy; a failure that stays is a FetchError with its reason.
        A source (not one image among many) refused with 401/403 raises AccessDenied."""
        def note(attempt: int, err: BaseException, wait: float) -> None:
            if _status(err) in (429, 503):
                self.stats.add("rate_limited")
            if progress():
                self.stats.add("resumes")
            self.stats.add(counter)

        try:
            return retry.call(fn, policy, _is_transient, _retry_after, note, self.sleep)
        except FetchError:
            raise
        except ValueError as err:  # requests' InvalidURL, MissingSchema, ...
            raise FetchError("bad_url", f"{url!r}: {err}") from err
        except OSError as err:  # requests' exceptions are OSErrors
            if source and _status(err) in (401, 403):
                raise AccessDenied(_status(err), url) from err
            raise FetchError(reason_from_exception(err), f"{url}: {err}") from err

    def read_bytes(self, location: str) -> bytes:
        """The whole content of a small source file (annotations, link lists); retried."""
        url = resolve(location)

        def once() -> bytes:
            if url.startswith("s3://"):
                return s3.get_bytes(url)
            if urlparse(url).scheme not in ("http", "https"):
                return Path(url).read_bytes()
            return self.get(url).content

        return self._retrying(once, url, self.policy, "retries")

    def fetch_image(self, url: str) -> bytes:
        """Image bytes from a URL; 5xx, 429 and connection errors are retried with backoff.

        A redirect to a host's "photo unavailable" image is reported as `placeholder`.
        """
        def once() -> bytes:
            resp = self.get(url)
            if is_placeholder_url(resp.url):
                raise FetchError("placeholder", f"{url} -> {resp.url}")
            return resp.content

        return self._retrying(once, url, replace(self.policy, retries=self.image_retries),
                              "image_retries", source=False)

    def fetch_archive(self, location: str, dest: Path) -> Path:
        """A large source file at `dest` (a local source is read where it is); resumable.

        `dest.part` holds the bytes received so far and `dest.part.json` the URL and validator
        (ETag or Last-Modified) they came with, so a rerun after a crash resumes too; a changed
        object upstream (If-Range mismatch: the server answers 200) restarts from byte 0.
        """
        url = resolve(location)
        if urlparse(url).scheme not in ("http", "https", "s3"):
            if not Path(url).is_file():
                raise FetchError("not_found", url)
            return Path(url)
        if dest.exists():
            return dest  # complete from an earlier run whose shards were not all committed
        dest.parent.mkdir(parents=True, exist_ok=True)
        if url.startswith("s3://"):
            part = dest.with_name(dest.name + ".part")
            try:
                s3.download_file(url, part)
            except Exception as err:  # botocore raises its own types; the reason says which
                raise FetchError("s3_error", f"{url}: {err}") from err
            part.rename(dest)
            return dest
        return self._http_archive(url, dest)

    def _http_archive(self, url: str, dest: Path) -> Path:
        part = dest.with_name(dest.name + ".part")
        meta_path = dest.with_name(dest.name + ".part.json")
        meta = _read_meta(meta_path)
        if meta.get("url") != url:
            part.unlink(missing_ok=True)
            meta = {"url": url}
        started_at = 0  # bytes on disk when the current attempt began

        def size() -> int:
            return part.stat().st_size if part.exists() else 0

        def once() -> Path:
            nonlocal started_at
            have = started_at = size()
            # Bytes as stored: a compressed transfer would make the Range offsets meaningless.
            headers = {"Accept-Encoding": "identity"}
            if have:
                headers["Range"] = f"bytes={have}-"
                if meta.get("validator"):
                    headers["If-Range"] = meta["validator"]
            try:
                resp = self.get(url, headers, stream=True)
            except requests.HTTPError as err:
                if _status(err) == 416 and have:
                    part.unlink(missing_ok=True)  # the part no longer fits the object: restart
                    self.stats.add("restarts")
                    return once()
                raise
            with resp:
                total = self._start_body(resp, have, part, dest, meta, meta_path)
                offset = size()
                # read1 hands over what has arrived, so a body cut mid-chunk leaves its bytes
                # on disk for the resume (iter_content would drop the unfinished chunk).
                with open(part, "ab") as out:
                    try:
                        while chunk := resp.raw.read1(CHUNK):
                            out.write(chunk)
                            offset += len(chunk)
                            self.stats.add("archive_bytes", len(chunk))
                    except urllib3.exceptions.ReadTimeoutError as err:
                        raise requests.ReadTimeout(str(err)) from err
                    except urllib3.exceptions.HTTPError as err:
                        raise IncompleteBody(str(err)) from err
            if total is not None and offset != total:
                raise IncompleteBody(f"{total - offset} bytes missing")
            part.rename(dest)
            meta_path.unlink(missing_ok=True)
            return dest

        return self._retrying(once, url, self.policy, "retries",
                              progress=lambda: size() > started_at)

    def _start_body(self, resp: requests.Response, have: int, part: Path, dest: Path,
                    meta: dict, meta_path: Path) -> int | None:
        """Check where the body starts and that it fits on disk; returns the object's length."""
        length = resp.headers.get("Content-Length")
        if resp.status_code == 206:
            start, total = parse_content_range(resp.headers.get("Content-Range"))
            if start != have:
                raise FetchError("bad_range", f"asked for byte {have}, got {start}")
        else:
            if have:
                self.stats.add("restarts")  # the server ignored Range or the object changed
            part.unlink(missing_ok=True)
            total = int(length) if length and length.isdigit() else None
            have = 0
        if total is not None:
            self.check_space(dest.parent, total - have)
        validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
        if validator != meta.get("validator") or "total" not in meta:
            meta.update(validator=validator, total=total)
            meta_path.write_text(json.dumps(meta))
        return total

    def check_space(self, folder: Path, need: int) -> None:
        free = shutil.disk_usage(folder).free
        if free < need + self.reserve_bytes:
            raise ScratchFull(folder, need + self.reserve_bytes, free)


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


PLACEHOLDER_NAMES = ("photo_unavailable",)  # Flickr redirects removed photos to this image


def is_placeholder_url(url: str) -> bool:
    name = urlparse(url).path.rsplit("/", 1)[-1].lower()
    return any(name.startswith(p) for p in PLACEHOLDER_NAMES)


def open_stream(location: str, timeout_s: float):
    """A binary stream of a source read front to back, never staged on disk (an HTTP body, a
    local file; an S3 object is read into memory)."""
    url = resolve(location)
    try:
        if url.startswith("s3://"):
            return io.BytesIO(s3.get_bytes(url))
        if urlparse(url).scheme in ("http", "https"):
            resp = Transfer(timeout_s=timeout_s).get(url, stream=True)
            resp.raw.decode_content = True  # requests asks for gzip; the reader wants the bytes
            return resp.raw
        return open(url, "rb")
    except OSError as err:
        if _status(err) in (401, 403):
            raise AccessDenied(_status(err), url) from err
        raise FetchError(reason_from_exception(err), f"{url}: {err}") from err


def read_bytes(location: str, timeout_s: float) -> bytes:
    """The whole content of a source file (annotations, link lists, metadata)."""
    return Transfer(timeout_s=timeout_s, policy=RetryPolicy(retries=0)).read_bytes(location)


def fetch_image(url: str, timeout_s: float, retries: int) -> bytes:
    """Image bytes from a URL, retried like `Transfer.fetch_image`."""
    return Transfer(timeout_s=timeout_s, image_retries=retries).fetch_image(url)
