"""Tests for telemetry_guard.testing: capture_events() with eager tasks."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from telemetry_guard import (
    FailureEvent,
    GuardedTask,
    RetryPolicy,
    Severity,
    TelemetryGuard,
)
from telemetry_guard.core import dispatch
from telemetry_guard.testing import capture_events

QUICK = RetryPolicy(max_retries=2, base_delay=0, max_delay=0.01)


@pytest.fixture
def always_down(celery_app: Celery) -> Any:
    """A guarded task that raises ConnectionError on every attempt."""
    TelemetryGuard(celery_app, redis_url=None)

    @celery_app.task(bind=True, base=GuardedTask, name="t.always_down", retry_policy=QUICK)
    def task(self: Any, order_id: int) -> None:
        raise ConnectionError(f"upstream down for {order_id}")

    return task


def test_retries_then_give_up_are_captured_in_order(always_down: Any) -> None:
    """Two retries then a give-up are captured as ["retry", "retry", "give_up"]."""
    with capture_events() as events:
        result = always_down.apply(args=(42,))
    assert isinstance(result.result, ConnectionError)
    assert all(isinstance(e, FailureEvent) for e in events)
    failures = [e for e in events if isinstance(e, FailureEvent)]
    assert [e.decision for e in failures] == ["retry", "retry", "give_up"]
    assert [e.attempt for e in failures] == [1, 2, 3]
    assert {e.task_name for e in failures} == {"t.always_down"}
    assert {e.exception_type for e in failures} == {"ConnectionError"}


def test_exhausted_retries_escalate_the_give_up_to_high(always_down: Any) -> None:
    """The give-up after exhausted retries is HIGH with reason max_retries_exceeded."""
    with capture_events() as events:
        always_down.apply(args=(42,))
    failures = [e for e in events if isinstance(e, FailureEvent)]
    assert [e.severity for e in failures[:2]] == [Severity.MEDIUM, Severity.MEDIUM]
    last = failures[-1]
    assert last.severity is Severity.HIGH
    assert last.reason == "max_retries_exceeded"
    assert last.max_retries == 2
    assert all(0 <= (e.delay_s or 0) <= 0.01 for e in failures[:2])


def test_events_outside_the_block_are_not_captured(always_down: Any) -> None:
    """Failures before or after the with block do not appear in the captured list."""
    always_down.apply(args=(1,))
    with capture_events() as events:
        always_down.apply(args=(2,))
    captured = len(events)
    always_down.apply(args=(3,))
    assert captured == 3
    assert len(events) == 3
    assert all("2" in e.message for e in events if isinstance(e, FailureEvent))


def test_capture_events_removes_its_listener_even_on_error() -> None:
    """Leaving the block, even by an exception, unregisters the listener."""
    before = list(dispatch.listeners)
    with pytest.raises(KeyError), capture_events():
        assert len(dispatch.listeners) == len(before) + 1
        raise KeyError("test body failed")
    assert dispatch.listeners == before


def test_nested_captures_each_see_the_events_of_their_block(always_down: Any) -> None:
    """An inner capture sees only its own block; the outer one sees everything."""
    with capture_events() as outer:
        always_down.apply(args=(1,))
        with capture_events() as inner:
            always_down.apply(args=(2,))
    assert len(outer) == 6
    assert len(inner) == 3
