"""A notification's mail, built only from sanitised, bounded values (pure)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid
from typing import Any

#: Lines up to SMTP's own limit, so a long subject is not folded onto a second line.
MAIL_POLICY = SMTP_POLICY.clone(max_line_length=998)
SUBJECT_MAX_CHARS = 200
HEADER_MAX_CHARS = 998
FIELD_WIDTH = 13
_LINE_BREAKS = re.compile(r"\r\n|[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def _clean_char(char: str) -> str:
    category = unicodedata.category(char)
    if category in ("Cc", "Zl", "Zp"):
        return " "
    if category in ("Cf", "Cs"):  # bidi overrides, zero-width, lone surrogates
        return ""
    return char


def header_text(value: object, limit: int = HEADER_MAX_CHARS) -> str:
    """``value`` as one header-safe line: control characters gone, whitespace collapsed."""
    text = value if isinstance(value, str) else str(value)
    text = " ".join("".join(map(_clean_char, text)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def body_text(value: object) -> str:
    """Multi-line text for a mail body: ``\\n`` line ends, no other control characters."""
    text = value if isinstance(value, str) else str(value)
    lines = _LINE_BREAKS.split(text)
    return "\n".join("".join(c if c == "\t" else _clean_char(c) for c in line).rstrip()
                     for line in lines)


def subject_for(payload: Mapping[str, Any]) -> str:
    """``[CRITICAL] <task name>: <exception type>``, sanitised and bounded."""
    severity = str(payload.get("severity") or "unknown").upper()
    return header_text(
        f"[{severity}] {payload.get('task_name')}: {payload.get('exception_type')}",
        SUBJECT_MAX_CHARS)


def body_for(payload: Mapping[str, Any], *, suppressed: int = 0,
             throttle: float | None = None) -> str:
    """The plain-text body: one field per line, then the redacted traceback."""

    def line(label: str, value: object) -> str:
        return f"{label + ':':<{FIELD_WIDTH}}{header_text('-' if value is None else value)}"

    message = body_text(payload.get("message") or "").replace("\n", "\n" + " " * FIELD_WIDTH)
    exc_type = header_text(payload.get("exception_type") or "-")
    lines = [
        f"{header_text(payload.get('task_name'))} failed with {exc_type}.",
        "",
        line("Task", payload.get("task_name")),
        line("Task id", payload.get("task_id")),
        f"{'Exception:':<{FIELD_WIDTH}}{exc_type}: {message}".rstrip(),
        line("Severity", payload.get("severity")),
        line("Time", payload.get("time")),
        line("Attempt", payload.get("attempt")),
        line("Host", payload.get("hostname")),
        line("Trace id", payload.get("trace_id")),
        *workflow_lines(payload, line),
    ]
    if suppressed > 0:
        lines.append(line("Suppressed", f"{suppressed} since the last mail"))
        window = f"; at most one mail per {throttle:g} s" if throttle else ""
        lines.append(f"{'':<{FIELD_WIDTH}}(same task and exception type{window})")
    lines += ["", "Traceback (redacted):", body_text(payload.get("traceback") or "(none)"), "",
              "Sent by telemetry_guard."]
    return "\n".join(lines) + "\n"


def workflow_lines(payload: Mapping[str, Any], line: Any) -> list[str]:
    """The workflow the task ran in, when it ran in one: root id and task, chain position,
    chord, and how many steps the give-up abandoned."""
    lines = []
    position, length = payload.get("chain_position"), payload.get("chain_length")
    dropped = payload.get("steps_dropped") or 0
    in_workflow = position is not None or payload.get("chord_id") or dropped
    if payload.get("root_id") and in_workflow:
        root_task = payload.get("root_task")
        lines.append(line("Workflow", f"{payload['root_id']}"
                                      + (f" (started by {root_task})" if root_task else "")))
    if position is not None:
        lines.append(line("Chain step", f"{position} of {length}" if length else position))
    if payload.get("chord_id"):
        lines.append(line("Chord", payload.get("chord_id")))
    if dropped:
        lines.append(line("Dropped", f"{dropped} step(s) of the workflow will not run"))
    return lines


def build_message(payload: Mapping[str, Any], *, sender: str, recipients: Iterable[str],
                  suppressed: int = 0, throttle: float | None = None) -> EmailMessage:
    """The mail for one notification; headers built only from sanitised values."""
    sender = header_text(sender)
    domain = sender.rpartition("@")[2].strip(" >") or "telemetry-guard.invalid"
    message = EmailMessage(policy=MAIL_POLICY)
    message["Subject"] = subject_for(payload)
    message["From"] = sender
    message["To"] = ", ".join(header_text(r) for r in recipients)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid("telemetry-guard", domain=header_text(domain, 200))
    message["Auto-Submitted"] = "auto-generated"
    message["X-Telemetry-Guard-Severity"] = header_text(payload.get("severity") or "", 20)
    message.set_content(body_for(payload, suppressed=suppressed, throttle=throttle))
    return message


def fingerprint_hash(payload: Mapping[str, Any], severity: str | None = None,
                     recipients: Iterable[str] = ()) -> str:
    """A short stable hash of the payload's fingerprint (task name, exception type).

    With ``severity`` and ``recipients``, the hash of one throttle slot: the same failure
    escalated to another severity or recipient list is throttled on its own.
    """
    fingerprint = payload.get("fingerprint") or [payload.get("task_name"),
                                                 payload.get("exception_type")]
    parts = [str(part) for part in fingerprint]
    if severity is not None:
        parts += ["severity", severity, "to", *sorted(recipients)]
    text = "\x00".join(parts)
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]
