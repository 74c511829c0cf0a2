"""GuardedTask with the fleet-wide retry budget turned on."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from prometheus_client import REGISTRY

from telemetry_guard import GuardedTask, RetryPolicy, TelemetryGuard
from telemetry_guard.testing import capture_events


def test_retries_beyond_the_budget_give_up_with_the_budget_reason(celery_app: Celery) -> None:
    """60 always-failing tasks, ratio 0.2, no reserve: about 12 retries, the rest give up."""
    guard = TelemetryGuard(celery_app, retry_budget={"ratio": 0.2, "min_retries_per_second": 0})
    policy = RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.02)

    @celery_app.task(bind=True, base=GuardedTask, name="rb.sync", retry_policy=policy,
                     shared=False)
    def sync(self: Any) -> None:
        raise ConnectionError("inventory service down")

    before = REGISTRY.get_sample_value("telemetry_guard_retry_budget_exhausted_total",
                                       {"task": "rb.sync"}) or 0
    with capture_events() as events, start_worker(
            celery_app, pool="solo", perform_ping_check=False, loglevel="CRITICAL"):
        results = [sync.delay() for _ in range(60)]
        for result in results:
            with pytest.raises(ConnectionError):
                result.get(timeout=30)
        guard.flush()
    retries = [e for e in events if getattr(e, "decision", None) == "retry"]
    refused = [e for e in events if getattr(e, "reason", None) == "retry_budget_exhausted"]
    first_attempts = 60
    assert 0.2 * first_attempts * 0.8 <= len(retries) <= 0.2 * first_attempts * 1.1
    assert len(refused) + len(retries) == first_attempts
    assert all(e.severity.label == "high" for e in refused)
    assert (REGISTRY.get_sample_value("telemetry_guard_retry_budget_exhausted_total",
                                      {"task": "rb.sync"}) or 0) - before == len(refused)


def test_budget_without_redis_is_a_clear_error(celery_app: Celery) -> None:
    """Turning the budget on without a Redis URL fails at set-up, naming the setting."""
    with pytest.raises(ValueError, match="telemetry_guard_redis_url"):
        TelemetryGuard(celery_app, redis_url=None, retry_budget=True)
