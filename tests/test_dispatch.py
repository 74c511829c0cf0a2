"""Tests for telemetry_guard.core.dispatch: fan-out to sinks, fail-open, listeners."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from telemetry_guard.core import dispatch
from telemetry_guard.core.classify import Severity
from telemetry_guard.core.dispatch import ERROR_LOG_INTERVAL, Dispatcher
from telemetry_guard.core.events import BreakerChange, FailureEvent
from telemetry_guard.core.sink import Sink
from telemetry_guard.sinks.metrics import get_metrics

_names = itertools.count()


def event(decision: str = "retry", task_name: str = "t.dispatch") -> FailureEvent:
    """A failure event as GuardedTask would build it."""
    return FailureEvent(
        task_name=task_name, task_id="id-1", attempt=1, max_retries=3,
        exception_type="ConnectionError", exception_module="builtins", message="reset",
        traceback="Traceback ...", severity=Severity.MEDIUM, decision=decision,  # type: ignore[arg-type]
        delay_s=0.5 if decision == "retry" else None)


class RecordingSink(Sink):
    """Appends what it receives to a shared journal, tagged with its name."""

    def __init__(self, name: str, journal: list[tuple[str, object]]) -> None:
        self.name = name
        self.journal = journal

    def on_failure(self, event: FailureEvent) -> None:
        self.journal.append((self.name, event))

    def on_breaker_change(self, change: BreakerChange) -> None:
        self.journal.append((self.name, change))

    def flush(self, timeout: float = 5.0) -> None:
        self.journal.append((self.name, "flush"))


class RaisingSink(Sink):
    """A sink whose every hook raises."""

    def __init__(self, name: str) -> None:
        self.name = name

    def on_failure(self, event: FailureEvent) -> None:
        raise RuntimeError("sink is down")

    def on_breaker_change(self, change: BreakerChange) -> None:
        raise RuntimeError("sink is down")

    def flush(self, timeout: float = 5.0) -> None:
        raise OSError("cannot flush")


def unique(prefix: str) -> str:
    """A sink name no other test uses, so counter samples start at zero."""
    return f"{prefix}_{next(_names)}_{time.monotonic_ns()}"


def errors(sink: str) -> float:
    """The current value of telemetry_guard_telemetry_errors_total for one sink."""
    value = REGISTRY.get_sample_value("telemetry_guard_telemetry_errors_total", {"sink": sink})
    return value or 0.0


@pytest.fixture
def telemetry_errors() -> object:
    """The process-wide telemetry_errors counter (registered in the default registry)."""
    return get_metrics().telemetry_errors


@pytest.fixture(autouse=True)
def no_leftover_listeners() -> Iterator[None]:
    """Every test leaves dispatch.listeners as it found it."""
    before = list(dispatch.listeners)
    yield
    dispatch.listeners[:] = before


def test_every_sink_gets_the_event_in_order(telemetry_errors: object) -> None:
    """Each sink receives the same event once, in the order the sinks were given."""
    journal: list[tuple[str, object]] = []
    sinks = [RecordingSink(n, journal) for n in ("a", "b", "c")]
    ev = event()
    Dispatcher(sinks, telemetry_errors=telemetry_errors).failure(ev)
    assert journal == [("a", ev), ("b", ev), ("c", ev)]


def test_breaker_change_goes_to_every_sink_in_order(telemetry_errors: object) -> None:
    """A breaker change is delivered to each sink in order."""
    journal: list[tuple[str, object]] = []
    change = BreakerChange("payments", "closed", "open")
    Dispatcher([RecordingSink("a", journal), RecordingSink("b", journal)],
               telemetry_errors=telemetry_errors).breaker_change(change)
    assert journal == [("a", change), ("b", change)]


def test_raising_sink_does_not_stop_later_sinks(telemetry_errors: object) -> None:
    """A sink that raises is skipped and the sinks after it still get the event."""
    journal: list[tuple[str, object]] = []
    name = unique("broken")
    ev = event()
    d = Dispatcher([RecordingSink("a", journal), RaisingSink(name), RecordingSink("c", journal)],
                   telemetry_errors=telemetry_errors)
    d.failure(ev)
    d.breaker_change(BreakerChange("b", "open", "half_open"))
    assert [n for n, _ in journal] == ["a", "c", "a", "c"]


def test_raising_sink_is_counted_under_its_name(telemetry_errors: object) -> None:
    """Each raise increments telemetry_guard_telemetry_errors_total{sink=<its name>}."""
    name, other = unique("broken"), unique("healthy")
    before, other_before = errors(name), errors(other)
    d = Dispatcher([RaisingSink(name), RecordingSink(other, [])],
                   telemetry_errors=telemetry_errors)
    d.failure(event())
    d.failure(event("give_up"))
    d.breaker_change(BreakerChange("b", "closed", "open"))
    assert errors(name) - before == 3
    assert errors(other) - other_before == 0


def test_raising_flush_is_counted_and_later_sinks_still_flush(telemetry_errors: object) -> None:
    """A sink whose flush raises is counted; the sinks after it are still flushed."""
    journal: list[tuple[str, object]] = []
    name = unique("broken")
    before = errors(name)
    Dispatcher([RaisingSink(name), RecordingSink("b", journal)],
               telemetry_errors=telemetry_errors).flush(0.1)
    assert journal == [("b", "flush")]
    assert errors(name) - before == 1


def test_sink_failure_is_logged_once_per_minute_per_sink(telemetry_errors: object) -> None:
    """Repeated failures of one sink log telemetry.sink_failed once; another sink logs its own."""
    first, second = unique("broken"), unique("broken")
    d = Dispatcher([RaisingSink(first), RaisingSink(second)], telemetry_errors=telemetry_errors)
    with capture_logs() as logs:
        for _ in range(5):
            d.failure(event())
    failed = [e for e in logs if e["event"] == "telemetry.sink_failed"]
    assert [(e["sink"], e["error"]) for e in failed] == [
        (first, "RuntimeError"), (second, "RuntimeError")]
    assert all(e["log_level"] == "warning" for e in failed)
    assert errors(first) == 5


def test_sink_failure_is_logged_again_after_the_interval(telemetry_errors: object) -> None:
    """Once ERROR_LOG_INTERVAL has passed since the last report, the next failure is logged."""
    name = unique("broken")
    d = Dispatcher([RaisingSink(name)], telemetry_errors=telemetry_errors)
    with capture_logs() as logs:
        d.failure(event())
        d.failure(event())
        # Pretend the last report is a minute old rather than waiting for it.
        d._last_logged[name] -= ERROR_LOG_INTERVAL + 1
        d.failure(event())
    assert len([e for e in logs if e["event"] == "telemetry.sink_failed"]) == 2


def test_report_error_without_counter_still_logs() -> None:
    """A dispatcher built without a counter logs a sink failure and never raises."""
    name = unique("broken")
    journal: list[tuple[str, object]] = []
    d = Dispatcher([RaisingSink(name), RecordingSink("b", journal)])
    with capture_logs() as logs:
        d.failure(event())
    assert [e["sink"] for e in logs if e["event"] == "telemetry.sink_failed"] == [name]
    assert len(journal) == 1


def test_listeners_receive_failures_and_breaker_changes(telemetry_errors: object) -> None:
    """Every process-wide listener gets each event after the sinks have."""
    journal: list[tuple[str, object]] = []
    heard: list[object] = []
    dispatch.listeners.append(heard.append)
    d = Dispatcher([RecordingSink("a", journal)], telemetry_errors=telemetry_errors)
    ev, change = event(), BreakerChange("b", "closed", "open")
    d.failure(ev)
    d.breaker_change(change)
    assert heard == [ev, change]
    assert journal == [("a", ev), ("a", change)]


def test_raising_listener_does_not_break_dispatch(telemetry_errors: object) -> None:
    """A listener that raises is ignored: later listeners still hear and nothing raises."""
    heard: list[object] = []

    def broken(item: object) -> None:
        raise ValueError("listener bug")

    dispatch.listeners.extend([broken, heard.append])
    journal: list[tuple[str, object]] = []
    ev = event("give_up")
    Dispatcher([RecordingSink("a", journal)], telemetry_errors=telemetry_errors).failure(ev)
    assert heard == [ev]
    assert journal == [("a", ev)]


def test_dispatcher_with_no_sinks_still_notifies_listeners() -> None:
    """An empty dispatcher hands events to listeners."""
    heard: list[object] = []
    dispatch.listeners.append(heard.append)
    ev = event()
    Dispatcher([]).failure(ev)
    assert heard == [ev]
