"""GuardedTask with the task option breaker=: open breakers delay or fall back, and are told."""

from __future__ import annotations

import time
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from telemetry_guard import CircuitBreaker, GuardedTask, RetryPolicy, TelemetryGuard
from telemetry_guard.core.events import BreakerChange
from telemetry_guard.testing import capture_events

NO_RETRY = RetryPolicy(max_retries=0)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_open_breaker_delays_the_task_until_half_open_without_running_it(
        celery_app: Celery) -> None:
    """Two failures trip the breaker; the next run waits for half-open, then runs and succeeds."""
    TelemetryGuard(celery_app)
    breaker = CircuitBreaker("tb.payments", failure_threshold=2, reset_timeout=1.0)
    runs: list[float] = []
    healthy = {"value": False}

    @celery_app.task(bind=True, base=GuardedTask, name="tb.charge", breaker="tb.payments",
                     retry_policy=NO_RETRY, shared=False)
    def charge(self: Any) -> str:
        runs.append(time.monotonic())
        if not healthy["value"]:
            raise ConnectionError("payments down")
        return "charged"

    before = sample("telemetry_guard_breaker_transitions_total", breaker="tb.payments",
                    from_state="closed", to_state="open")
    with capture_events() as events, capture_logs() as logs, start_worker(
            celery_app, pool="solo", perform_ping_check=False, loglevel="CRITICAL"):
        for _ in range(2):
            with pytest.raises(ConnectionError):
                charge.delay().get(timeout=20)
        assert breaker.state == "open"
        healthy["value"] = True
        sent = time.monotonic()
        assert charge.delay().get(timeout=20) == "charged"

    assert len(runs) == 3
    assert runs[2] - sent >= 0.5  # not run while the breaker was open
    assert breaker.state == "closed"
    changes = [(e.from_state, e.to_state) for e in events if isinstance(e, BreakerChange)]
    assert changes[0] == ("closed", "open") and ("half_open", "closed") in changes
    assert [e for e in logs if e["event"] == "task.breaker_wait"]
    assert [e["event"] for e in logs].count("breaker.state_changed") == len(changes)
    assert sample("telemetry_guard_breaker_transitions_total", breaker="tb.payments",
                  from_state="closed", to_state="open") - before == 1
    assert sample("telemetry_guard_breaker_calls_total", breaker="tb.payments",
                  outcome="rejected") >= 1
    assert sample("telemetry_guard_breaker_state", breaker="tb.payments", state="closed") == 1
    assert sample("telemetry_guard_breaker_state", breaker="tb.payments", state="open") == 0


def test_open_breaker_with_fallback_returns_the_fallback(celery_app: Celery) -> None:
    """With fallback=, an open breaker returns the fallback's result without running the task."""
    TelemetryGuard(celery_app)
    breaker = CircuitBreaker("tb.quotes", failure_threshold=1, reset_timeout=60.0)
    breaker.force_open()
    runs: list[int] = []

    @celery_app.task(bind=True, base=GuardedTask, name="tb.quote", breaker=breaker,
                     fallback=lambda sku: {"sku": sku, "price": None, "stale": True},
                     shared=False)
    def quote(self: Any, sku: str) -> dict[str, Any]:
        runs.append(1)
        return {"sku": sku, "price": 10}

    with start_worker(celery_app, pool="solo", perform_ping_check=False, loglevel="CRITICAL"):
        assert quote.delay("A-1").get(timeout=20) == {"sku": "A-1", "price": None, "stale": True}
    assert runs == []


def test_waiting_past_breaker_max_wait_gives_up_at_high(celery_app: Celery) -> None:
    """A breaker that stays open longer than breaker_max_wait makes the task give up, HIGH."""
    TelemetryGuard(celery_app, breaker_max_wait=0.5)
    breaker = CircuitBreaker("tb.ledger", failure_threshold=1, reset_timeout=30.0)
    breaker.force_open()

    @celery_app.task(bind=True, base=GuardedTask, name="tb.post", breaker="tb.ledger",
                     shared=False)
    def post(self: Any) -> None:
        raise AssertionError("must not run")

    with capture_events() as events, start_worker(
            celery_app, pool="solo", perform_ping_check=False, loglevel="CRITICAL"):
        with pytest.raises(Exception) as raised:
            post.delay().get(timeout=20)
    assert type(raised.value).__name__ == "CircuitOpenError"
    gave_up = [e for e in events if not isinstance(e, BreakerChange)]
    assert [(e.reason, e.severity.label) for e in gave_up] == [("breaker_open_too_long", "high")]
