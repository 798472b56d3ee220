"""A threaded HTTP server on loopback that serves a corpus folder like the upstream hosts.

Text files (.tsv, .txt, .json, .jsonl) have the corpus placeholder host replaced by the server's
own base URL. `/` answers 200 (the health check); `/_status/<code>` answers with that status, to
play a failing host. Paths outside the folder are refused.
"""

from __future__ import annotations

import mimetypes
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

from infra.mirror.corpus import TOKEN

TEXT_SUFFIXES = {".tsv", ".txt", ".json", ".jsonl"}


class MirrorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0,
                 log_requests: bool = False) -> None:
        self.root = root.resolve()
        self.log_requests = log_requests
        super().__init__((host, port), MirrorHandler)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class MirrorHandler(BaseHTTPRequestHandler):
    server: MirrorServer

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        self._serve(with_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(with_body=False)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base signature
        if self.server.log_requests:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, content_type: str, with_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
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
        file = (self.server.root / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.server.root) or not file.is_file():
            self._send(404, b"not found", "text/plain", with_body)
            return
        body = file.read_bytes()
        if file.suffix in TEXT_SUFFIXES:
            body = body.replace(TOKEN.encode(), self.server.base_url.encode())
        content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        self._send(200, body, content_type, with_body)


def serve_in_thread(root: Path, host: str = "127.0.0.1", port: int = 0
                    ) -> tuple[MirrorServer, threading.Thread]:
    """Start a server in a daemon thread (tests, benchmarks); stop it with .shutdown()."""
    server = MirrorServer(root, host, port)
    thread = threading.Thread(target=server.serve_forever, name="mirror", daemon=True)
    thread.start()
    return server, thread
