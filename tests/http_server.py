"""A private HTTP server for tests: each path answers from a script and counts its hits."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted answer: status, JSON (or text) body, extra headers, a delay before it."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return json.dumps(self.body).encode(), "application/json"


@dataclass(frozen=True)
class Hit:
    """One request the server received."""

    at: float
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


class ScriptedHTTPServer:
    """``ThreadingHTTPServer`` on 127.0.0.1 in a thread; the last reply of a script repeats."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Reply]] = {}
        self._hits: list[Hit] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                reply = server._record(Hit(time.monotonic(), self.command, path, query,
                                           dict(self.headers.items()), body))
                if reply.delay:
                    time.sleep(reply.delay)
                payload, content_type = reply.encoded()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (a timeout test)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _answer

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        """Answer ``path`` with ``replies`` in order, then the last one forever."""
        with self._lock:
            self._scripts[path] = list(replies)

    def hits(self, path: str) -> list[Hit]:
        """The requests received for ``path``, oldest first."""
        with self._lock:
            return [hit for hit in self._hits if hit.path == path]

    def _record(self, hit: Hit) -> Reply:
        with self._lock:
            self._hits.append(hit)
            replies = self._scripts.get(hit.path) or [Reply(404, {"error": "not scripted"})]
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def start(self) -> ScriptedHTTPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)
