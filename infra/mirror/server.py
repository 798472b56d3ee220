"""A threaded HTTP server on loopback that serves a corpus folder like the upstream hosts.

Text files (.tsv, .txt, .json, .jsonl) have the corpus placeholder host replaced by the server's
own base URL. Files are served with ETag, Last-Modified and single-range `Range` support (206,
`If-Range` honoured), as the Hugging Face and CDN hosts do. `/` answers 200 (the health check).
Paths outside the folder are refused. Routes that play a failing host:

    /_status/<code>                   that status (e.g. 401, 403, 500)
    /_drop/<percent>/<path>           <path>, but a response covering byte <percent>% of the
                                      file is cut there and the connection closed; a range
                                      starting at or after it is served whole
    /_busy/<code>/<times>/<path>      the first <times> requests answer <code> (429 or 503)
                                      with `Retry-After: 1`, later ones serve <path>
    /_redirect/<host:port>/<path>     302 to http://<host:port>/<path> (another server)
    /_gone/<path>                     302 to the placeholder below, as Flickr does for a
                                      removed photo
    /flickr/photo_unavailable.png     Flickr's "photo unavailable" stand-in

Every request is recorded (`requests`: path, headers, status, byte range) and every body byte
counted per served file (`bytes_served`), so tests can see what a client asked for and got.
"""

from __future__ import annotations

import email.utils
import mimetypes
import re
import threading
from collections import Counter
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

from infra.mirror.corpus import TOKEN

TEXT_SUFFIXES = {".tsv", ".txt", ".json", ".jsonl"}
RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class MirrorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0,
                 log_requests: bool = False) -> None:
        self.root = root.resolve()
        self.log_requests = log_requests
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.bytes_served: Counter = Counter()
        self.hits: Counter = Counter()
        super().__init__((host, port), MirrorHandler)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def record(self, entry: dict) -> None:
        with self.lock:
            self.requests.append(entry)
            del self.requests[:-10000]  # a long-running service keeps the recent ones

    def count(self, key: str, nbytes: int = 0) -> int:
        """Add served bytes of a file (or a hit of a route) and return the hits so far."""
        with self.lock:
            self.bytes_served[key] += nbytes
            if not nbytes:
                self.hits[key] += 1
            return self.hits[key]


class MirrorHandler(BaseHTTPRequestHandler):
    server: MirrorServer
    # Keep-alive, as the upstream hosts do: every response carries its Content-Length, and a
    # connection left idle is closed after `timeout` s so it does not hold a thread forever.
    # Headers and body go out in two writes: without TCP_NODELAY the body waits ~40 ms for the
    # client's delayed ACK on a kept-alive connection (nginx's tcp_nodelay, on by default).
    protocol_version = "HTTP/1.1"
    timeout = 60
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        self._serve(with_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(with_body=False)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base signature
        if self.server.log_requests:
            super().log_message(format, *args)

    def _record(self, status: int, span: tuple[int, int] | None = None) -> None:
        self.server.record({"path": self.path, "headers": dict(self.headers.items()),
                            "status": status, "range": span,
                            "client": self.client_address[0]})

    def _send(self, status: int, body: bytes, content_type: str, with_body: bool,
              headers: dict[str, str] | None = None) -> None:
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def _serve(self, with_body: bool) -> None:
        path = unquote(urlparse(self.path).path)
        if path == "/":
            listing = "\n".join(sorted(p.name for p in self.server.root.iterdir()))
            self._send(200, f"dataset mirror\n{listing}\n".encode(), "text/plain", with_body)
            return
        if path.startswith("/_status/"):
            code = path.rsplit("/", 1)[-1]
            status = int(code) if code.isdigit() and 400 <= int(code) <= 599 else 500
            self._send(status, HTTPStatus(status).phrase.encode(), "text/plain", with_body)
            return
        if path == "/flickr/photo_unavailable.png":
            self._send(200, placeholder_png(), "image/png", with_body)
            return
        if path.startswith("/_gone/"):
            self._send(302, b"", "text/plain", with_body,
                       {"Location": "/flickr/photo_unavailable.png"})
            return
        match = re.match(r"/_redirect/([^/]+)(/.*)$", path)
        if match:
            target = f"http://{match[1]}{match[2]}"
            self._send(302, b"", "text/plain", with_body, {"Location": target})
            return
        match = re.match(r"/_busy/(\d{3})/(\d+)(/.*)$", path)
        if match:
            if self.server.count(self.path) <= int(match[2]):
                code = int(match[1])
                self._send(code, HTTPStatus(code).phrase.encode(), "text/plain", with_body,
                           {"Retry-After": "1"})
                return
            path = match[3]
        cut_percent = None
        match = re.match(r"/_drop/(\d{1,2})(/.*)$", path)
        if match:
            cut_percent, path = int(match[1]), match[2]
        self._file(path, with_body, cut_percent)

    def _file(self, path: str, with_body: bool, cut_percent: int | None) -> None:
        file = (self.server.root / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.server.root) or not file.is_file():
            self._send(404, b"not found", "text/plain", with_body)
            return
        body = file.read_bytes()
        if file.suffix in TEXT_SUFFIXES:
            body = body.replace(TOKEN.encode(), self.server.base_url.encode())
        stat = file.stat()
        etag = f'"{len(body):x}-{stat.st_mtime_ns:x}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes",
                   "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True)}
        content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        start, end, status = 0, len(body), 200
        wanted = RANGE.match(self.headers.get("Range", "").strip())
        if_range = self.headers.get("If-Range")
        if wanted and (if_range is None or if_range == etag):
            start = int(wanted[1])
            end = min(len(body), int(wanted[2]) + 1) if wanted[2] else len(body)
            if start >= len(body) or start >= end:
                self._send(416, b"range not satisfiable", "text/plain", with_body,
                           {"Content-Range": f"bytes */{len(body)}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(body)}"
        self._record(status, (start, end))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(end - start))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not with_body:
            return
        stop = end
        if cut_percent is not None:
            cut = len(body) * cut_percent // 100
            if start < cut < end:
                stop = cut
        # Counted before the write: a client may check the count as soon as it has the bytes.
        self.server.count(str(file.relative_to(self.server.root)), stop - start)
        self.wfile.write(body[start:stop])
        if stop < end:
            # Play a connection lost mid-body: the client sees fewer bytes than announced.
            self.wfile.flush()
            self.close_connection = True


_PLACEHOLDER: list[bytes] = []


def placeholder_png() -> bytes:
    """A grey 500x374 PNG standing in for Flickr's "This photo is no longer available"."""
    if not _PLACEHOLDER:
        import io

        from PIL import Image, ImageDraw

        image = Image.new("RGB", (500, 374), (230, 230, 230))
        ImageDraw.Draw(image).text((150, 180), "This photo is no longer available",
                                   fill=(120, 120, 120))
        out = io.BytesIO()
        image.save(out, format="PNG")
        _PLACEHOLDER.append(out.getvalue())
    return _PLACEHOLDER[0]


def serve_in_thread(root: Path, host: str = "127.0.0.1", port: int = 0
                    ) -> tuple[MirrorServer, threading.Thread]:
    """Start a server in a daemon thread (tests, benchmarks); stop it with .shutdown()."""
    server = MirrorServer(root, host, port)
    thread = threading.Thread(target=server.serve_forever, name="mirror", daemon=True)
    thread.start()
    return server, thread
