"""GuardedTask under a real worker on a private Redis broker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from opentelemetry import trace
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from telemetry_guard import GuardedTask, RetryPolicy, Severity, TelemetryGuard

FAST = RetryPolicy(max_retries=3, base_delay=0.05, max_delay=0.2, retry_on=(ConnectionError,))


class Opaque:
    """A non-JSON argument with a known repr."""

    def __repr__(self) -> str:
        return "<Opaque thing>"


def sample(name: str, **labels: str) -> float:
    """A metric's current value in this process (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def worker(celery_app: Celery) -> Iterator[Any]:
    """An in-process solo worker consuming the app's queue (started by the test)."""
    def start() -> Any:
        return start_worker(celery_app, pool="solo", perform_ping_check=False,
                            loglevel="WARNING", shutdown_timeout=10)
    yield start


def test_two_connection_errors_then_success_are_two_retries_and_no_giveup(
        celery_app: Celery, worker: Any, spans: Any) -> None:
    """Failing twice with ConnectionError, then succeeding: 2 failures, 2 retries, 0 give-ups."""
    guard = TelemetryGuard(celery_app)
    calls = {"n": 0}

    @celery_app.task(bind=True, base=GuardedTask, name="t.flaky", retry_policy=FAST)
    def flaky(self: Any) -> str:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("upstream reset")
        return "ok"

    before = {
        "retries": sample("telemetry_guard_task_retries_total", task="t.flaky",
                          exception="ConnectionError"),
        "giveups": sample("telemetry_guard_task_giveups_total", task="t.flaky",
                          exception="ConnectionError", severity="medium"),
        "failures": sample("telemetry_guard_task_failures_total", task="t.flaky",
                           exception="ConnectionError", severity="medium"),
        "rt_retry": sample("telemetry_guard_task_runtime_seconds_count", task="t.flaky",
                           outcome="retry"),
        "rt_success": sample("telemetry_guard_task_runtime_seconds_count", task="t.flaky",
                             outcome="success"),
    }
    with capture_logs() as logs, worker():
        assert flaky.delay().get(timeout=20) == "ok"
        guard.flush()

    scheduled = [e for e in logs if e["event"] == "task.retry_scheduled"]
    assert [e["attempt"] for e in scheduled] == [1, 2]
    assert all(0 <= e["delay_s"] <= FAST.max_delay for e in scheduled)
    assert all(e["max_retries"] == 3 and e["task_name"] == "t.flaky" for e in scheduled)
    assert len([e for e in logs if e["event"] == "task.failed"]) == 2
    assert not [e for e in logs if e["event"] == "task.gave_up"]
    assert sample("telemetry_guard_task_retries_total", task="t.flaky",
                  exception="ConnectionError") - before["retries"] == 2
    assert sample("telemetry_guard_task_failures_total", task="t.flaky",
                  exception="ConnectionError", severity="medium") - before["failures"] == 2
    assert sample("telemetry_guard_task_giveups_total", task="t.flaky",
                  exception="ConnectionError", severity="medium") == before["giveups"]
    assert sample("telemetry_guard_task_runtime_seconds_count", task="t.flaky",
                  outcome="retry") - before["rt_retry"] == 2
    assert sample("telemetry_guard_task_runtime_seconds_count", task="t.flaky",
                  outcome="success") - before["rt_success"] == 1

    runs = [s for s in spans.get_finished_spans() if s.name == "run/t.flaky"]
    assert len(runs) == 3
    retry_events = [ev for s in runs for ev in s.events if ev.name == "task.retry"]
    assert [ev.attributes["telemetry_guard.attempt"] for ev in retry_events] == [1, 2]
    assert [s.attributes["celery.retries"] for s in runs] == [0, 1, 2]
    assert [s.status.status_code.name for s in runs] == ["ERROR", "ERROR", "UNSET"]


def test_non_retryable_error_gives_up_once_and_error_log_record_is_redacted_and_bounded(
        celery_app: Celery, worker: Any, redis_url: str) -> None:
    """A non-retryable error: one failed + one gave_up event, one redacted, bounded JSON record."""
    guard = TelemetryGuard(celery_app)

    @celery_app.task(bind=True, base=GuardedTask, name="t.broken", retry_policy=FAST)
    def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise ValueError("bad order state")

    huge = "x" * (5 * 1024 * 1024)
    before = sample("telemetry_guard_task_giveups_total", task="t.broken",
                    exception="ValueError", severity="low")
    with capture_logs() as logs, worker():
        result = broken.apply_async(
            args=(huge,),
            kwargs={"password": "hunter2-canary", "api_key": "ak-canary", "items": [1, 2]},
            serializer="pickle")
        with pytest.raises(ValueError):
            result.get(timeout=20)
        guard.flush()

    assert [e["event"] for e in logs if e["event"].startswith("task.")] == [
        "task.failed", "task.gave_up"]
    assert logs[-1]["reason"] == "not_retryable"
    assert sample("telemetry_guard_task_giveups_total", task="t.broken",
                  exception="ValueError", severity="low") - before == 1

    client = redis.Redis.from_url(redis_url)
    entries = client.xrange("telemetry_guard:errors")
    assert len(entries) == 1
    raw = entries[0][1][b"record"].decode()
    record = json.loads(raw)
    assert record["task_name"] == "t.broken" and record["severity"] == "low"
    assert record["exception_type"] == "ValueError" and record["decision"] == "give_up"
    assert record["kwargs"]["password"] == "[REDACTED]"
    assert record["kwargs"]["api_key"] == "[REDACTED]"
    assert record["kwargs"]["items"] == [1, 2]
    assert len(record["args"][0]) < 40 * 1024
    assert "hunter2-canary" not in raw and "ak-canary" not in raw
    assert len(raw.encode()) <= guard.settings.max_record_bytes
    assert "ValueError: bad order state" in record["traceback"]


def test_non_json_arguments_are_stored_as_bounded_reprs(
        celery_app: Celery, worker: Any, redis_url: str) -> None:
    """Objects, sets and bytes in arguments become reprs, and the record still parses as JSON."""
    guard = TelemetryGuard(celery_app)

    @celery_app.task(bind=True, base=GuardedTask, name="t.opaque")
    def opaque(self: Any, *args: Any) -> None:
        raise KeyError("missing")

    with worker():
        with pytest.raises(KeyError):
            opaque.apply_async(args=(Opaque(), {3, 1, 2}, b"\x00\xffbytes"),
                               serializer="pickle").get(timeout=20)
        guard.flush()
    entries = redis.Redis.from_url(redis_url).xrange("telemetry_guard:errors")
    record = json.loads(entries[0][1][b"record"])
    assert record["args"][0] == "<Opaque thing>"
    assert isinstance(record["args"][2], str) and "bytes" in record["args"][2]
    assert sorted(record["args"][1]) == [1, 2, 3] or isinstance(record["args"][1], str)


def test_retries_exhausted_escalate_to_high_and_go_to_dead_letters(
        celery_app: Celery, worker: Any, redis_url: str) -> None:
    """A retryable error that exhausts its retries gives up at HIGH and is kept for replay."""
    guard = TelemetryGuard(celery_app)
    policy = RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.05)

    @celery_app.task(bind=True, base=GuardedTask, name="t.down", retry_policy=policy)
    def down(self: Any, order_id: int, token: str = "") -> None:
        raise TimeoutError("still down")

    with capture_logs() as logs, worker():
        with pytest.raises(TimeoutError):
            down.delay(42, token="tok-canary").get(timeout=20)
        guard.flush()
    gave_up = [e for e in logs if e["event"] == "task.gave_up"]
    assert len(gave_up) == 1
    assert gave_up[0]["severity"] == "high" and gave_up[0]["reason"] == "max_retries_exceeded"
    failed = [e["severity"] for e in logs if e["event"] == "task.failed"]
    assert failed == ["medium", "medium", "high"]
    dead = redis.Redis.from_url(redis_url).xrange("telemetry_guard:dead")
    assert len(dead) == 1
    replay = json.loads(dead[0][1][b"replay"])
    assert replay["task"] == "t.down" and replay["args"] == [42]
    assert replay["kwargs"] == {"token": "tok-canary"}
    assert "tok-canary" not in dead[0][1][b"record"].decode()


def test_producer_trace_continues_in_the_worker(
        celery_app: Celery, worker: Any, spans: Any) -> None:
    """apply_async inside an active span: the worker span and log events share its trace id."""
    TelemetryGuard(celery_app)

    @celery_app.task(bind=True, base=GuardedTask, name="t.traced")
    def traced(self: Any) -> None:
        raise LookupError("nope")

    tracer = trace.get_tracer("tests")
    with capture_logs() as logs, worker():
        with tracer.start_as_current_span("checkout") as parent:
            result = traced.delay()
        trace_id = format(parent.get_span_context().trace_id, "032x")
        with pytest.raises(LookupError):
            result.get(timeout=20)
    run = [s for s in spans.get_finished_spans() if s.name == "run/t.traced"]
    assert len(run) == 1
    assert format(run[0].context.trace_id, "032x") == trace_id
    assert run[0].parent is not None and run[0].parent.span_id == parent.get_span_context().span_id
    failed = [e for e in logs if e["event"] == "task.failed"]
    assert failed and failed[0]["trace_id"] == trace_id
    assert run[0].attributes["telemetry_guard.severity"] == "low"


def test_severity_task_option_overrides_the_classifier(celery_app: Celery) -> None:
    """The task option severity= wins over the classifier (eager run, no broker needed)."""
    from telemetry_guard.testing import capture_events

    TelemetryGuard(celery_app, redis_url=None)

    @celery_app.task(bind=True, base=GuardedTask, name="t.critical", severity="critical")
    def critical(self: Any) -> None:
        raise ValueError("ledger mismatch")

    with capture_events() as events:
        critical.apply()
    assert [(e.severity, e.decision) for e in events] == [(Severity.CRITICAL, "give_up")]


def test_expected_errors_from_throws_are_counted_and_marked_expected(celery_app: Celery) -> None:
    """An exception listed in the task's throws is still a failure, marked expected."""
    from telemetry_guard.testing import capture_events

    TelemetryGuard(celery_app, redis_url=None)

    @celery_app.task(bind=True, base=GuardedTask, name="t.expected", throws=(KeyError,))
    def expected(self: Any) -> None:
        raise KeyError("no such coupon")

    before = sample("telemetry_guard_task_failures_total", task="t.expected",
                    exception="KeyError", severity="low")
    with capture_events() as events:
        expected.apply()
    assert [(e.expected, e.decision) for e in events] == [(True, "give_up")]
    assert sample("telemetry_guard_task_failures_total", task="t.expected",
                  exception="KeyError", severity="low") - before == 1
