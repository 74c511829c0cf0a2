"""Coexistence with opentelemetry-instrumentation-celery: its span is annotated, not duplicated."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.contrib.testing.worker import start_worker

from telemetry_guard import GuardedTask, RetryPolicy, TelemetryGuard


def test_instrumentation_span_is_annotated_not_duplicated(
        celery_app: Celery, spans: Any, instrumented: None) -> None:
    """With the instrumentation active, each run has exactly one span, carrying our annotations."""
    TelemetryGuard(celery_app, redis_url=None)
    policy = RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.02)

    @celery_app.task(bind=True, base=GuardedTask, name="otel.flaky", retry_policy=policy)
    def flaky(self: Any) -> str:
        if self.request.retries == 0:
            raise ConnectionError("first try fails")
        return "ok"

    with start_worker(celery_app, pool="solo", perform_ping_check=False, loglevel="CRITICAL"):
        assert flaky.delay().get(timeout=20) == "ok"

    runs = [s for s in spans.get_finished_spans() if s.name == "run/otel.flaky"]
    assert len(runs) == 2
    first = runs[0]
    assert first.attributes["telemetry_guard.severity"] == "medium"
    assert first.attributes["celery.task_name"] == "otel.flaky"
    assert [e.name for e in first.events if e.name in ("exception", "task.retry")] == [
        "exception", "task.retry"]
    assert runs[1].status.status_code.name != "ERROR"
    assert not [e for e in runs[1].events if e.name == "exception"]
