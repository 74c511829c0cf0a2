"""A private Sentry endpoint for tests: records the envelopes sentry-sdk posts to it.

``SentryServer("ok")`` answers 200, ``"error"`` answers 500, ``"hang"`` reads the request
and never answers (until ``stop``). The DSN is ``http://key@127.0.0.1:<port>/1``; the SDK
posts envelopes to ``/api/1/envelope/``, gzip- (or brotli-) compressed.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from tests.local_http import decode_body, serve_in_thread

Mode = Literal["ok", "error", "hang"]


@dataclass
class Envelope:
    """One posted envelope: its headers, its items (header, payload) and the raw body."""

    headers: dict[str, Any]
    items: list[tuple[dict[str, Any], bytes]]
    raw: bytes

    def events(self) -> list[dict[str, Any]]:
        """The payloads of the items of type ``event``, parsed."""
        return [json.loads(payload) for header, payload in self.items
                if header.get("type") == "event"]


def parse_envelope(body: bytes) -> Envelope:
    """Parse Sentry's envelope format: a JSON header line, then (item header, payload) pairs."""
    header_line, _, rest = body.partition(b"\n")
    items: list[tuple[dict[str, Any], bytes]] = []
    while rest.strip():
        item_line, _, rest = rest.partition(b"\n")
        if not item_line.strip():
            continue
        item_header = json.loads(item_line)
        length = item_header.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length:]
            if rest.startswith(b"\n"):
                rest = rest[1:]
        items.append((item_header, payload))
    return Envelope(json.loads(header_line), items, body)


@dataclass
class SentryServer:
    """A local HTTP server standing in for Sentry's ingestion endpoint."""

    mode: Mode = "ok"
    envelopes: list[Envelope] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._httpd = serve_in_thread(self._handler(), "sentry-server")

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def dsn(self) -> str:
        return f"http://key@127.0.0.1:{self.port}/1"

    def events(self) -> list[dict[str, Any]]:
        """Every event received so far, in arrival order."""
        with self._lock:
            return [event for envelope in self.envelopes for event in envelope.events()]

    def raw(self) -> bytes:
        """All envelope bodies received, decompressed, concatenated."""
        with self._lock:
            return b"\n".join(envelope.raw for envelope in self.envelopes)

    def requests(self) -> int:
        with self._lock:
            return len(self.paths)

    def stop(self) -> None:
        """Release hanging requests, stop serving and close the socket."""
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _record(self, path: str, body: bytes, encoding: str | None) -> None:
        with self._lock:
            self.paths.append(path)
            try:
                self.envelopes.append(parse_envelope(decode_body(body, encoding)))
            except Exception as exc:  # a malformed post fails the test that looks at errors
                self.errors.append(f"{path}: {type(exc).__name__}: {exc}")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                server._record(self.path, body, self.headers.get("Content-Encoding"))
                if server.mode == "hang":
                    server._release.wait(60)
                    self.close_connection = True
                    return
                status = 200 if server.mode == "ok" else 500
                reply = b"{}" if status == 200 else b'{"detail": "internal error"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                """Silence the per-request log lines."""

        return Handler
