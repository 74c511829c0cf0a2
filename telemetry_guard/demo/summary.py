"""The demo's closing summary: counts, breaker transitions, the mail, the newest error record."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .services import CaughtMail
from .view import BreakerTransition, Snapshot

#: Body lines of a caught mail shown in the summary.
MAIL_BODY_LINES = 10
#: Longest string value of the error-log record shown in the summary.
RECORD_VALUE_CHARS = 160


@dataclass
class DemoResult:
    """Everything the summary tells, gathered once the worker has stopped."""

    snapshot: Snapshot
    transport: str
    interrupted: bool
    transitions: list[BreakerTransition]
    mails: list[CaughtMail]
    smtp: str
    metrics_url: str
    log_path: str
    log_kept: bool
    log_counts: Counter[str] = field(default_factory=Counter)
    record: dict[str, Any] | None = None
    record_source: str = ""


def render_summary(r: DemoResult) -> list[str]:
    """The summary as plain lines (the same on a terminal and in a pipe)."""
    s = r.snapshot
    how = "interrupted" if r.interrupted else "finished"
    lines = [f"telemetry_guard demo {how} after {s.elapsed:.1f} s on {r.transport}", ""]

    def row(label: str, value: str) -> None:
        lines.append(f"  {label:<22}{value}")

    row("tasks sent", str(s.sent))
    row("tasks succeeded", f"{s.succeeded} ({s.fallbacks} answered by the cached fallback)")
    row("failures", f"{s.failures_total:.0f} ({s.failures_text(', ')})")
    row("retries scheduled", f"{s.retries:.0f}")
    row("give-ups", f"{s.giveups:.0f}")
    breakers = ", ".join(f"{name} {state}" for name, state in s.breakers.items())
    row("breakers now", breakers or "(none)")
    row("e-mail notifications", s.notifications_text(", "))
    lines += ["", "  breaker transitions:"]
    if not r.transitions:
        lines.append("    (none)")
    for t in r.transitions:
        lines.append(f"    +{t.at:5.1f}s  {t.breaker}: {t.from_state} -> {t.to_state}"
                     f"  ({t.reason})")
    lines += ["", f"  mail caught by the SMTP catcher at {r.smtp}: {len(r.mails)}"]
    for mail in r.mails[:1]:
        lines += mail_lines(mail)
    if len(r.mails) > 1:
        lines.append(f"    ... and {len(r.mails) - 1} more: "
                     + "; ".join(sorted({m.subject for m in r.mails[1:]})))
    lines.append("")
    keep = "kept" if r.log_kept else "temporary, removed on exit: pass --log-file to keep it"
    row("JSON logs", f"{r.log_path} ({keep})")
    events = ", ".join(f"{name} {n}" for name, n in sorted(r.log_counts.items()))
    lines.append(f"    {sum(r.log_counts.values())} events: {events or '-'}")
    row("/metrics", f"{r.metrics_url} (served while the demo ran)")
    lines += ["", f"  newest error-log record ({r.record_source}), secrets redacted:"]
    if r.record is None:
        lines.append("    (none)")
    else:
        shown = json.dumps(shorten_record(r.record), indent=2, ensure_ascii=False, default=str)
        lines += ["    " + line for line in shown.splitlines()]
    return lines


def mail_lines(mail: CaughtMail) -> list[str]:
    """Subject, envelope and the first lines of the body of one caught mail."""
    body = mail.body.splitlines()[:MAIL_BODY_LINES]
    return ([f"    Subject: {mail.subject}",
             f"    From: {mail.mail_from}  To: {', '.join(mail.rcpt_tos)}"]
            + [f"    | {line}".rstrip() for line in body] + ["    | ..."])


def shorten_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record with its traceback cut to the last line and long values cut short."""
    shown: dict[str, Any] = {}
    for key, value in record.items():
        if key == "traceback" and isinstance(value, str) and value:
            value = "... " + value.strip().splitlines()[-1]
        if isinstance(value, str) and len(value) > RECORD_VALUE_CHARS:
            value = value[: RECORD_VALUE_CHARS - 1] + "…"
        shown[key] = value
    return shown
