"""A private capturing SMTP server (aiosmtpd) on a free port, for tests that need real mail."""

from __future__ import annotations

import email
import email.policy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.servers import free_port


@dataclass
class CapturedMail:
    """One message as the server received it: envelope and raw bytes."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    received_at: float = field(default_factory=time.monotonic)

    @property
    def message(self) -> EmailMessage:
        """The message parsed with the modern e-mail policy."""
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def body(self) -> str:
        """The decoded plain-text body, with ``\n`` line ends."""
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None
        return str(part.get_content()).replace("\r\n", "\n")  # type: ignore[attr-defined]


class _Handler:
    def __init__(self, server: CapturingSMTPServer) -> None:
        self.server = server

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = CapturedMail(str(envelope.mail_from), [str(r) for r in envelope.rcpt_tos],
                            bytes(envelope.original_content or envelope.content))
        self.server._received(mail)
        return "250 Message accepted for delivery"


class CapturingSMTPServer:
    """Receives mail on ``127.0.0.1:<port>`` and keeps every message in ``messages``.

    ``port`` defaults to a free one; ``start``/``stop`` may be called again to take the
    server down and bring it back on the same port. ``on_receive`` is called (on the
    server's thread) with each message as it arrives. With ``credentials``, AUTH LOGIN and
    PLAIN are offered over plain text and only that (user, password) pair is accepted.
    """

    def __init__(self, port: int | None = None, *,
                 on_receive: Callable[[CapturedMail], None] | None = None,
                 credentials: tuple[str, str] | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.on_receive = on_receive
        self.credentials = credentials
        self.messages: list[CapturedMail] = []
        self._controller: Controller | None = None
        self._cond = threading.Condition()

    def __enter__(self) -> CapturingSMTPServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        """Listen on the port (again); returns once the server answers."""
        if self._controller is not None:
            return
        kwargs: dict[str, Any] = {}
        if self.credentials is not None:
            kwargs.update(authenticator=self._authenticate, auth_require_tls=False)
        controller = Controller(_Handler(self), hostname=self.host, port=self.port,
                                ready_timeout=10.0, **kwargs)
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Stop listening; captured messages are kept."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword) and self.credentials is not None:
            user, password = self.credentials
            if (auth_data.login.decode(), auth_data.password.decode()) == (user, password):
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def _received(self, mail: CapturedMail) -> None:
        if self.on_receive is not None:
            self.on_receive(mail)
        with self._cond:
            self.messages.append(mail)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[CapturedMail]:
        """Wait until at least ``count`` messages arrived; all of them (fails on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{len(self.messages)} of {count} mail(s) arrived within {timeout}s")
                self._cond.wait(remaining)
            return list(self.messages)

    def settings(self, **extra: Any) -> dict[str, Any]:
        """An ``email`` setting pointing at this server."""
        return {"host": self.host, "port": self.port, "sender": "guard@example.com",
                "recipients": ["ops@example.com"], **extra}
