"""What the demo shows while it runs: a ``rich`` live table, or one plain line at a time.

Both views read the same :class:`Snapshot`, taken once a second from the process's
Prometheus registry (the numbers ``/metrics`` serves), the breakers' shared state, the
demo's own tally and the JSON log file.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from prometheus_client import REGISTRY

SEVERITIES = ("low", "medium", "high", "critical")
#: Seconds between two status lines when stdout is not a terminal.
PLAIN_INTERVAL = 2.0
STATE_STYLES = {"closed": "green", "half_open": "yellow", "open": "bold red"}


@dataclass(frozen=True)
class BreakerTransition:
    """One ``breaker.state_changed`` line of the log, with its offset from the demo's start."""

    at: float
    breaker: str
    from_state: str
    to_state: str
    reason: str


class LogTail:
    """Reads the JSON log file as it grows: event counts and breaker transitions, in order."""

    def __init__(self, path: Path, started_wall: float, *, offset: int = 0) -> None:
        self.path = path
        self.started_wall = started_wall
        self.counts: Counter[str] = Counter()
        self.transitions: list[BreakerTransition] = []
        self._offset = offset
        self._partial = b""

    def poll(self) -> list[BreakerTransition]:
        """Read the lines written since the last poll; returns the new breaker transitions."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return []
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        new: list[BreakerTransition] = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            name = str(event.get("event"))
            self.counts[name] += 1
            if name == "breaker.state_changed":
                new.append(BreakerTransition(
                    at=_offset_of(event.get("timestamp"), self.started_wall),
                    breaker=str(event.get("breaker")), from_state=str(event.get("from_state")),
                    to_state=str(event.get("to_state")), reason=str(event.get("reason") or "")))
        self.transitions.extend(new)
        return new


def _offset_of(timestamp: Any, started_wall: float) -> float:
    try:
        when = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        when = time.time()
    return max(0.0, when - started_wall)


@dataclass
class Snapshot:
    """Every number the views show, at one moment."""

    elapsed: float = 0.0
    duration: float = 0.0
    sent: int = 0
    succeeded: int = 0
    fallbacks: int = 0
    failures: dict[str, float] = field(default_factory=dict)
    retries: float = 0.0
    giveups: float = 0.0
    breakers: dict[str, str] = field(default_factory=dict)
    notifications: dict[str, float] = field(default_factory=dict)
    mails: int = 0
    log_events: int = 0
    downstream_down: bool = False

    @property
    def failures_total(self) -> float:
        return sum(self.failures.values())

    def failures_text(self, sep: str = " · ") -> str:
        return sep.join(f"{s} {self.failures.get(s, 0):.0f}" for s in SEVERITIES)

    def notifications_text(self, sep: str = " · ") -> str:
        return sep.join(f"{o} {self.notifications.get(o, 0):.0f}"
                        for o in ("sent", "throttled", "failed"))


def read_metrics(snapshot: Snapshot) -> None:
    """Fill the telemetry counts of ``snapshot`` from the process's Prometheus registry."""
    failures: dict[str, float] = {}
    notifications: dict[str, float] = {}
    breakers: dict[str, str] = {}
    retries = giveups = 0.0
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == "telemetry_guard_task_failures_total":
                severity = s.labels.get("severity", "")
                failures[severity] = failures.get(severity, 0.0) + s.value
            elif s.name == "telemetry_guard_task_retries_total":
                retries += s.value
            elif s.name == "telemetry_guard_task_giveups_total":
                giveups += s.value
            elif s.name == "telemetry_guard_notifications_total" \
                    and s.labels.get("channel") == "email":
                outcome = s.labels.get("outcome", "")
                notifications[outcome] = notifications.get(outcome, 0.0) + s.value
            elif s.name == "telemetry_guard_breaker_state" and s.value == 1:
                breakers[s.labels["breaker"]] = s.labels["state"]
    snapshot.failures = failures
    snapshot.notifications = notifications
    snapshot.breakers = breakers
    snapshot.retries = retries
    snapshot.giveups = giveups


def status_line(s: Snapshot) -> str:
    """The one-line status of the plain view."""
    breakers = " ".join(f"{name}={state}" for name, state in s.breakers.items()) or "-"
    return (f"[{s.elapsed:5.1f}s/{s.duration:g}s] sent={s.sent} ok={s.succeeded} "
            f"failures={s.failures_total:.0f} ({s.failures_text(', ')}) "
            f"retries={s.retries:.0f} give-ups={s.giveups:.0f} breaker {breakers} "
            f"mail {s.notifications_text(', ')}")


class PlainView:
    """For a pipe or a file: a status line every few seconds, notes as they happen."""

    def __init__(self, stream: IO[str] | None = None, interval: float = PLAIN_INTERVAL) -> None:
        self.stream = stream or sys.stdout
        self.interval = interval
        self._last = 0.0

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def update(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.note(status_line(snapshot))

    def note(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class LiveView:
    """For a terminal: a ``rich`` table redrawn each second, notes printed above it."""

    def __init__(self, *, title: str, links: dict[str, str]) -> None:
        from rich.console import Console
        from rich.live import Live

        self.title = title
        self.links = links
        self.console = Console()
        self.live = Live(self._table(Snapshot()), console=self.console, auto_refresh=False,
                         transient=False, redirect_stdout=False, redirect_stderr=False)

    def __enter__(self) -> LiveView:
        self.live.start(refresh=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.live.stop()

    def update(self, snapshot: Snapshot) -> None:
        self.live.update(self._table(snapshot), refresh=True)

    def note(self, text: str) -> None:
        from rich.text import Text

        self.live.console.print(Text(text))

    def _table(self, s: Snapshot) -> Any:
        from rich.table import Table
        from rich.text import Text

        when = (f"{s.elapsed:4.1f} s of {s.duration:g} s" if s.elapsed < s.duration
                else "finishing: retries and mail still in flight")
        table = Table(title=f"{self.title} · {when}",
                      caption="Ctrl-C stops the demo", show_header=False, expand=False,
                      title_justify="left")
        table.add_column("what", style="bold")
        table.add_column("value")
        table.add_row("tasks sent", str(s.sent))
        table.add_row("tasks succeeded",
                      f"{s.succeeded}  ({s.fallbacks} answered by the cached fallback)")
        table.add_row("failures", f"{s.failures_total:.0f}  ({s.failures_text()})")
        table.add_row("retries scheduled", f"{s.retries:.0f}")
        table.add_row("give-ups", f"{s.giveups:.0f}")
        downstream = Text("down (503)", style="red") if s.downstream_down \
            else Text("up", style="green")
        table.add_row("inventory service", downstream)
        for name, state in (s.breakers or {"(no breaker yet)": "-"}).items():
            table.add_row(f"breaker {name}", Text(state, style=STATE_STYLES.get(state, "")))
        table.add_row("e-mail notifications", s.notifications_text())
        table.add_row("mail caught", str(s.mails))
        table.add_row("log events", str(s.log_events))
        for label, link in self.links.items():
            table.add_row(label, link)
        return table


def make_view(*, title: str, links: dict[str, str],
              stream: IO[str] | None = None) -> LiveView | PlainView:
    """A live table when stdout is a terminal and ``rich`` is installed, else plain lines."""
    out = stream or sys.stdout
    if out.isatty():
        try:
            return LiveView(title=title, links=links)
        except ImportError:
            pass
    return PlainView(out)
