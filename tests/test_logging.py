"""Tests for telemetry_guard.sinks.logging: LogSink events and configure_logging's JSON lines."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import structlog
from opentelemetry import trace
from structlog.testing import capture_logs

from telemetry_guard import configure_logging
from telemetry_guard.core.classify import Severity
from telemetry_guard.core.events import BreakerChange, FailureEvent
from telemetry_guard.sinks.logging import LogSink

COMMON = ("task_name", "task_id", "severity", "hostname", "pid")


def event(decision: str, **overrides: Any) -> FailureEvent:
    """A failure event as GuardedTask would build it."""
    fields: dict[str, Any] = dict(
        task_name="t.charge", task_id="abc-123", attempt=2, max_retries=5,
        exception_type="ConnectionError", exception_module="builtins",
        message="connection reset", traceback="Traceback (most recent call last):\n  ...\n",
        severity=Severity.MEDIUM, decision=decision, hostname="worker-1@host", pid=4321,
        queue="payments")
    if decision == "retry":
        fields["delay_s"] = 1.23456
    else:
        fields.update(severity=Severity.HIGH, reason="max_retries_exceeded")
    fields.update(overrides)
    return FailureEvent(**fields)


@pytest.fixture
def json_stream() -> Iterator[io.StringIO]:
    """structlog configured by configure_logging() to write into a buffer; reset afterwards."""
    stream = io.StringIO()
    configure_logging(stream=stream)
    yield stream
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line written, each parsed as one JSON object."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_retry_event_logs_failed_then_retry_scheduled() -> None:
    """A retry logs task.failed then task.retry_scheduled with attempt, max_retries, delay_s."""
    with capture_logs() as logs:
        LogSink().on_failure(event("retry"))
    assert [e["event"] for e in logs] == ["task.failed", "task.retry_scheduled"]
    failed, scheduled = logs
    assert failed["log_level"] == "warning"
    assert failed["exception_message"] == "connection reset"
    assert failed["exception_type"] == "ConnectionError"
    assert scheduled["log_level"] == "info"
    assert scheduled["attempt"] == 2
    assert scheduled["max_retries"] == 5
    assert scheduled["delay_s"] == 1.235


def test_give_up_event_logs_failed_then_gave_up_with_reason() -> None:
    """A give-up is told as task.failed then task.gave_up carrying its reason."""
    with capture_logs() as logs:
        LogSink().on_failure(event("give_up"))
    assert [e["event"] for e in logs] == ["task.failed", "task.gave_up"]
    assert logs[1]["reason"] == "max_retries_exceeded"
    assert logs[1]["log_level"] == "error"
    assert "delay_s" not in logs[1]


@pytest.mark.parametrize("decision", ["retry", "give_up"])
def test_every_event_carries_task_severity_host_and_pid(decision: str) -> None:
    """Each event has task_name, task_id, lowercase severity, hostname and pid."""
    ev = event(decision)
    with capture_logs() as logs:
        LogSink().on_failure(ev)
    assert len(logs) == 2
    for entry in logs:
        assert {k: entry[k] for k in COMMON} == {
            "task_name": "t.charge", "task_id": "abc-123", "severity": ev.severity.label,
            "hostname": "worker-1@host", "pid": 4321}
        assert entry["severity"] in ("medium", "high")
        assert entry["queue"] == "payments"


def test_event_trace_ids_are_logged_when_the_event_has_them() -> None:
    """An event built inside a span carries its trace_id and span_id into every log line."""
    ev = event("retry", trace_id="a" * 32, span_id="b" * 16)
    with capture_logs() as logs:
        LogSink().on_failure(ev)
    assert {(e["trace_id"], e["span_id"]) for e in logs} == {("a" * 32, "b" * 16)}


def test_breaker_change_is_logged_with_states() -> None:
    """A breaker change logs breaker.state_changed with breaker, from_state and to_state."""
    with capture_logs() as logs:
        LogSink().on_breaker_change(BreakerChange("payments", "closed", "open", reason="5 fails"))
    assert logs == [{"event": "breaker.state_changed", "breaker": "payments",
                     "from_state": "closed", "to_state": "open", "reason": "5 fails",
                     "log_level": "warning"}]


def test_configure_logging_writes_one_json_object_per_line(json_stream: io.StringIO) -> None:
    """Each LogSink event becomes one line of JSON with level and event name."""
    LogSink().on_failure(event("retry"))
    records = lines(json_stream)
    assert [r["event"] for r in records] == ["task.failed", "task.retry_scheduled"]
    assert [r["level"] for r in records] == ["warning", "info"]
    assert records[0]["traceback"].startswith("Traceback")
    assert records[1]["pid"] == 4321


def test_configure_logging_timestamps_are_iso_8601_utc(json_stream: io.StringIO) -> None:
    """Every line's timestamp is ISO 8601 in UTC and close to now."""
    LogSink().on_failure(event("give_up"))
    for record in lines(json_stream):
        stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
        assert stamp.utcoffset() == timedelta(0)
        assert abs(datetime.now(stamp.tzinfo) - stamp) < timedelta(minutes=1)


def test_configure_logging_adds_the_active_span_ids(json_stream: io.StringIO) -> None:
    """Inside an active span, lines without ids get the span's trace_id and span_id."""
    tracer = trace.get_tracer(__name__)
    with tracer.start_as_current_span("test-span") as span:
        ctx = span.get_span_context()
        LogSink().on_failure(event("retry"))
    records = lines(json_stream)
    assert len(records) == 2
    for record in records:
        assert record["trace_id"] == format(ctx.trace_id, "032x")
        assert record["span_id"] == format(ctx.span_id, "016x")


def test_configure_logging_adds_no_ids_without_a_span(json_stream: io.StringIO) -> None:
    """Outside any span, lines carry no trace_id or span_id."""
    LogSink().on_failure(event("retry"))
    for record in lines(json_stream):
        assert "trace_id" not in record
        assert "span_id" not in record


def test_configure_logging_keeps_the_events_own_trace_ids(json_stream: io.StringIO) -> None:
    """An event that carries ids keeps them even when another span is active."""
    with trace.get_tracer(__name__).start_as_current_span("other"):
        LogSink().on_failure(event("retry", trace_id="c" * 32, span_id="d" * 16))
    for record in lines(json_stream):
        assert (record["trace_id"], record["span_id"]) == ("c" * 32, "d" * 16)


def test_configure_logging_filters_below_its_level() -> None:
    """With level=WARNING, the info-level task.retry_scheduled is not written."""
    stream = io.StringIO()
    configure_logging(stream=stream, level=30)
    try:
        LogSink().on_failure(event("retry"))
    finally:
        structlog.reset_defaults()
    assert [r["event"] for r in lines(stream)] == ["task.failed"]


def test_capture_logs_works_after_configure_logging_is_reset() -> None:
    """After configure_logging() and reset_defaults(), capture_logs() sees new LogSink events."""
    stream = io.StringIO()
    configure_logging(stream=stream)
    LogSink().on_failure(event("give_up", pid=os.getpid()))
    structlog.reset_defaults()
    with capture_logs() as logs:
        LogSink().on_failure(event("give_up", pid=os.getpid()))
    assert [e["pid"] for e in logs] == [os.getpid(), os.getpid()]
    assert len(lines(stream)) == 2
