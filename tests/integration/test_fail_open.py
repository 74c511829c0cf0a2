"""Broken telemetry never changes what a task does."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from prometheus_client import REGISTRY

from telemetry_guard import GuardedTask, RetryPolicy, TelemetryGuard
from tests.servers import free_port

POLICY = RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.05)


def errors(sink: str) -> float:
    return REGISTRY.get_sample_value("telemetry_guard_telemetry_errors_total", {"sink": sink}) or 0


def run_workload(app: Celery, guard: TelemetryGuard, name: str) -> list[tuple[str, Any, int]]:
    """Successes, retries that recover, retries exhausted, a non-retryable error."""
    attempts: Counter[str] = Counter()

    @app.task(bind=True, base=GuardedTask, name=name, retry_policy=POLICY)
    def work(self: Any, kind: str, key: str) -> str:
        attempts[key] += 1
        if kind == "recovers" and self.request.retries < 2:
            raise ConnectionError("reset")
        if kind == "down":
            raise TimeoutError("still down")
        if kind == "invalid":
            raise ValueError("bad input")
        return f"{kind}:{self.request.retries}"

    kinds = ["ok", "recovers", "down", "invalid", "ok", "recovers"]
    outcomes = []
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="CRITICAL"):
        results = [(k, f"{k}-{i}", work.delay(k, f"{k}-{i}")) for i, k in enumerate(kinds)]
        for kind, key, result in results:
            try:
                value: Any = result.get(timeout=30)
            except Exception as exc:
                value = type(exc).__name__
            outcomes.append((kind, value, attempts[key]))
        guard.flush(timeout=1.0)
    return outcomes


def test_unreachable_error_log_and_raising_span_exporter_change_no_outcome(
        celery_app: Celery, redis_url: str, failing_span_exporter: Any) -> None:
    """Redis for the error log down and the span exporter raising: same outcomes and retries."""
    failing_span_exporter.failing = False
    healthy = run_workload(celery_app, TelemetryGuard(celery_app), "fo.healthy")

    before = {"errorlog": errors("errorlog"), "span_exporter": errors("span_exporter")}
    failing_span_exporter.failing = True
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    broken = run_workload(celery_app, TelemetryGuard(celery_app, redis_url=dead_redis),
                          "fo.broken")

    assert broken == healthy
    assert [o[1] for o in healthy] == [
        "ok:0", "recovers:2", "TimeoutError", "ValueError", "ok:0", "recovers:2"]
    assert [o[2] for o in healthy] == [1, 3, 3, 1, 1, 3]
    assert errors("errorlog") > before["errorlog"]
    assert errors("span_exporter") > before["span_exporter"]


@pytest.mark.parametrize("broken_sink", ["logging", "metrics"])
def test_a_sink_that_raises_is_counted_and_the_task_still_retries(
        celery_app: Celery, broken_sink: str) -> None:
    """A sink raising on every event: the task's retries and result are unchanged."""
    guard = TelemetryGuard(celery_app, redis_url=None)
    for sink in guard.dispatcher.sinks:
        if sink.name == broken_sink:
            def explode(event: Any) -> None:
                raise RuntimeError("sink broken")
            sink.on_failure = explode  # type: ignore[method-assign]
    before = errors(broken_sink)
    outcomes = run_workload(celery_app, guard, f"fo.{broken_sink}")
    assert [o[1] for o in outcomes] == [
        "ok:0", "recovers:2", "TimeoutError", "ValueError", "ok:0", "recovers:2"]
    # 2 + 3 + 1 + 2 failed attempts
    assert errors(broken_sink) - before == 8
