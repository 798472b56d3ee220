"""Reading source files and images from http(s), s3 or local paths, with failure reasons.

A failure reason is a short stable label (`http_404`, `timeout`, `connection_error`, ...) so that
the download statistics can be summed across shards and compared across runs.

Large archives (SA-1B tars, JourneyDB tgz parts, the TextCaps image zip, DiffusionDB part zips)
go through `Transfer.fetch_archive`: the body is written to `<name>.part` in a scratch folder and a
dropped connection resumes with an HTTP Range request from the byte where it stopped; transient
failures are retried with exponential backoff and jitter (429/503 honour Retry-After), and every
retry, resume and byte is counted in `Transfer.stats`.

Credentials: HF_TOKEN is sent only to the hosts in `token_hosts`, and an Authorization or Cookie
header never follows a redirect to another origin (scheme, host or port) nor an https -> http
downgrade, as curl and requests behave.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from infra import s3
from infra.settings import REPO_ROOT, mirror_url
from tasks.common.errors import OperationalError

USER_AGENT = "micro-budget-download/1.0 (+https://github.com/rom1504/img2dataset)"
RETRYABLE_HTTP = {408, 429, 500, 502, 503, 504}
SECRET_HEADERS = ("Authorization", "Cookie", "Proxy-authorization")
DEFAULT_TOKEN_HOSTS = ("huggingface.co",)
CHUNK = 1 << 20  # bytes per read of an archive body
GIB = 1 << 30


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


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlparse(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def keeps_credentials(old_url: str, new_url: str) -> bool:
    """Whether a redirect may carry credentials: same origin, or http -> https on one host.

    The upgrade case matches requests' should_strip_auth; anything else (another host or port,
    https -> http) drops them, as curl does since 7.58.
    """
    old, new = _origin(old_url), _origin(new_url)
    if old == new:
        return True
    return (old[1] == new[1] and (old[0], old[2]) == ("http", 80)
            and (new[0], new[2]) == ("https", 443))


class SafeRedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handler copies every header to the new URL; this one strips secrets
    when the redirect leaves the origin the request was made for."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and not keeps_credentials(req.full_url, new.full_url):
            for name in SECRET_HEADERS:
                new.remove_header(name)
        return new


OPENER = urllib.request.build_opener(SafeRedirectHandler)


def request(url: str, token_hosts: tuple[str, ...] = DEFAULT_TOKEN_HOSTS,
            headers: dict[str, str] | None = None) -> urllib.request.Request:
    """A GET with our User-Agent; HF_TOKEN only when the URL's own host is a token host."""
    out = {"User-Agent": USER_AGENT, **(headers or {})}
    token = os.environ.get("HF_TOKEN")
    if token and (urlparse(url).hostname or "").lower() in token_hosts:
        out["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(url, headers=out)


def reason_from_exception(err: BaseException) -> str:
    if isinstance(err, FetchError):
        return err.reason
    if isinstance(err, urllib.error.HTTPError):
        return f"http_{err.code}"
    if isinstance(err, urllib.error.URLError):
        return "timeout" if isinstance(err.reason, (socket.timeout, TimeoutError)) \
            else "connection_error"
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(err, FileNotFoundError):
        return "not_found"
    if isinstance(err, http.client.IncompleteRead):
        return "incomplete_transfer"
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


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (AWS architecture blog's "full jitter" variant)."""

    retries: int = 8  # extra attempts after the first
    backoff_s: float = 1.0  # base of the exponential: attempt k waits up to base * 2^(k-1)
    backoff_max_s: float = 60.0  # cap of one wait, Retry-After included

    def delay(self, attempt: int, retry_after: float | None = None,
              rng: random.Random | None = None) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        wait = (rng or random).uniform(0.0, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.backoff_max_s))
        return wait


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
    if isinstance(err, urllib.error.HTTPError):
        return err.code in RETRYABLE_HTTP
    return not isinstance(err, (FileNotFoundError, ValueError))


def parse_content_range(value: str | None) -> tuple[int, int | None]:
    """(first byte, total length or None) of `bytes a-b/total`."""
    if not value or not value.startswith("bytes "):
        raise ValueError(f"bad Content-Range {value!r}")
    span, _, total = value[6:].partition("/")
    return int(span.split("-")[0]), (int(total) if total.strip().isdigit() else None)


@dataclass
class Transfer:
    """Timeouts, retries, token hosts and counters shared by one dataset's downloads."""

    timeout_s: float = 10.0
    image_retries: int = 2
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    token_hosts: tuple[str, ...] = DEFAULT_TOKEN_HOSTS
    reserve_bytes: int = GIB  # free space kept on the scratch disk beyond an archive
    stats: NetStats = field(default_factory=NetStats)
    sleep: object = time.sleep  # tests replace it to observe waits without sleeping

    def open(self, url: str, headers: dict[str, str] | None = None):
        return OPENER.open(request(url, self.token_hosts, headers), timeout=self.timeout_s)

    def _wait(self, attempt: int, err: BaseException) -> None:
        after = None
        if isinstance(err, urllib.error.HTTPError) and err.code in (429, 503):
            after = retry_after_s(err.headers.get("Retry-After"))
            self.stats.add("rate_limited")
        self.stats.add("retries")
        self.sleep(self.policy.delay(attempt, after))

    @staticmethod
    def _raise_denied(err: BaseException, url: str) -> None:
        if isinstance(err, urllib.error.HTTPError) and err.code in (401, 403):
            raise AccessDenied(err.code, url) from err

    def read_bytes(self, location: str) -> bytes:
        """The whole content of a small source file (annotations, link lists); retried."""
        url = resolve(location)
        attempt = 0
        while True:
            try:
                if url.startswith("s3://"):
                    return s3.get_bytes(url)
                if urlparse(url).scheme not in ("http", "https"):
                    return Path(url).read_bytes()
                with self.open(url) as resp:
                    return resp.read()
            except (OSError, http.client.HTTPException) as err:
                self._raise_denied(err, url)
                attempt += 1
                if attempt > self.policy.retries or not _is_transient(err):
                    raise FetchError(reason_from_exception(err), f"{url}: {err}") from err
                self._wait(attempt, err)

    def fetch_image(self, url: str) -> bytes:
        """Image bytes from a URL; 5xx, 429 and connection errors are retried with backoff.

        A redirect to a host's "photo unavailable" image is reported as `placeholder`.
        """
        attempt = 0
        while True:
            try:
                with self.open(url) as resp:
                    if is_placeholder_url(resp.geturl()):
                        raise FetchError("placeholder", f"{url} -> {resp.geturl()}")
                    return resp.read()
            except ValueError as err:
                raise FetchError("bad_url", repr(url)) from err
            except (OSError, http.client.HTTPException) as err:
                if isinstance(err, FetchError):
                    raise
                attempt += 1
                if attempt > self.image_retries or not _is_transient(err):
                    raise FetchError(reason_from_exception(err), f"{url}: {err}") from err
                self.stats.add("image_retries")
                self.sleep(min(self.policy.backoff_max_s, 0.2 * attempt) * random.uniform(0.5, 1))

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
        attempt = 0
        while True:
            have = part.stat().st_size if part.exists() else 0
            headers = {}
            if have:
                headers["Range"] = f"bytes={have}-"
                if meta.get("validator"):
                    headers["If-Range"] = meta["validator"]
            try:
                with self.open(url, headers) as resp:
                    total = self._start_body(resp, have, part, dest, meta, meta_path)
                    offset = part.stat().st_size if part.exists() else 0
                    with open(part, "ab") as out:
                        while chunk := resp.read(CHUNK):
                            out.write(chunk)
                            offset += len(chunk)
                            self.stats.add("archive_bytes", len(chunk))
                if total is not None and offset != total:
                    raise http.client.IncompleteRead(b"", total - offset)
                part.rename(dest)
                meta_path.unlink(missing_ok=True)
                return dest
            except (OSError, http.client.HTTPException) as err:
                if isinstance(err, FetchError):
                    raise
                self._raise_denied(err, url)
                if isinstance(err, urllib.error.HTTPError) and err.code == 416 and have:
                    part.unlink(missing_ok=True)  # the part no longer fits the object: restart
                    self.stats.add("restarts")
                    continue
                attempt += 1
                if attempt > self.policy.retries or not _is_transient(err):
                    raise FetchError(reason_from_exception(err), f"{url}: {err}") from err
                if part.exists() and part.stat().st_size > have:
                    self.stats.add("resumes")
                self._wait(attempt, err)

    def _start_body(self, resp, have: int, part: Path, dest: Path, meta: dict,
                    meta_path: Path) -> int | None:
        """Check where the body starts and that it fits on disk; returns the object's length."""
        length = resp.headers.get("Content-Length")
        if resp.status == 206:
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
            import io

            return io.BytesIO(s3.get_bytes(url))
        if urlparse(url).scheme in ("http", "https"):
            return OPENER.open(request(url), timeout=timeout_s)
        return open(url, "rb")
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise AccessDenied(err.code, url) from err
        raise FetchError(reason_from_exception(err), f"{url}: {err}") from err
    except (OSError, http.client.HTTPException) as err:
        raise FetchError(reason_from_exception(err), f"{url}: {err}") from err


def read_bytes(location: str, timeout_s: float) -> bytes:
    """The whole content of a source file (annotations, link lists, metadata)."""
    return Transfer(timeout_s=timeout_s, policy=RetryPolicy(retries=0)).read_bytes(location)


def fetch_image(url: str, timeout_s: float, retries: int) -> bytes:
    """Image bytes from a URL, retried like `Transfer.fetch_image`."""
    return Transfer(timeout_s=timeout_s, image_retries=retries).fetch_image(url)
