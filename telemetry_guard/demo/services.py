"""The demo's private servers: redis-server, a downstream HTTP service, an SMTP catcher.

Each binds 127.0.0.1 on a free port, starts in ``start()`` and stops in ``stop()``;
nothing here is shared with another process or left running after the demo.
"""

from __future__ import annotations

import email
import email.policy
import json
import queue
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis

from ..stores.redis_client import new_redis_client

#: Seconds a private redis-server gets to answer PING.
REDIS_START_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on a free port, with no persistence."""

    def __init__(self, workdir: str, binary: str) -> None:
        self.workdir = workdir
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def available(cls) -> str | None:
        """The path of ``redis-server`` when it is on PATH."""
        return shutil.which("redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server; returns once it answers PING (raises RuntimeError if it never does)."""
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = new_redis_client(self.url, timeout=2.0, connect_timeout=0.2, retries=0)
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}")
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {REDIS_START_TIMEOUT:g} s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class DownstreamService:
    """A JSON HTTP service on 127.0.0.1 that answers 503 while ``down`` is set.

    ``GET /inventory/<sku>`` answers ``{"sku": ..., "in_stock": ...}``; every request is
    counted in ``hits`` and, while down, in ``refused``.
    """

    def __init__(self) -> None:
        self.down = False
        self.hits = 0
        self.refused = 0
        self._lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (the stdlib's naming)
                status, body = service._answer(self.path)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever,
                                        name="demo-downstream", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _answer(self, path: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.hits += 1
            if self.down:
                self.refused += 1
                return 503, {"error": "inventory service unavailable"}
        sku = path.rstrip("/").rpartition("/")[2]
        return 200, {"sku": sku, "in_stock": sum(map(ord, sku)) % 17}

    def start(self) -> DownstreamService:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class CaughtMail:
    """One message the SMTP catcher received."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    received_at: float = field(default_factory=time.time)

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def subject(self) -> str:
        return str(self.message["Subject"] or "")

    @property
    def body(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        if part is None:
            return ""
        return str(part.get_content()).replace("\r\n", "\n")


class _MailHandler:
    def __init__(self, catcher: MailCatcher) -> None:
        self.catcher = catcher

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.catcher._received(CaughtMail(
            str(envelope.mail_from), [str(r) for r in envelope.rcpt_tos],
            bytes(envelope.original_content or envelope.content)))
        return "250 Message accepted for delivery"


class MailCatcher:
    """An aiosmtpd server on 127.0.0.1 that keeps every message it receives.

    New messages are also put on ``arrivals`` so the demo can show them as they come.
    """

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.messages: list[CaughtMail] = []
        self.arrivals: queue.Queue[CaughtMail] = queue.Queue()
        self._controller: Any = None

    def _received(self, mail: CaughtMail) -> None:
        self.messages.append(mail)
        self.arrivals.put(mail)

    def start(self) -> MailCatcher:
        from aiosmtpd.controller import Controller

        controller = Controller(_MailHandler(self), hostname=self.host, port=self.port,
                                ready_timeout=10.0)
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def settings(self) -> dict[str, Any]:
        """The guard's ``email`` setting pointing here, with quick notification retries."""
        return {"host": self.host, "port": self.port, "sender": "telemetry-guard@demo.invalid",
                "recipients": ["on-call@demo.invalid"], "timeout": 5.0,
                "retry_base_delay": 0.2, "retry_max_delay": 1.0, "retry_max_retries": 3}
