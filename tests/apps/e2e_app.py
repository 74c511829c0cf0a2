"""A Celery app for the Prometheus end-to-end test: one task per fact the dashboards show.

Run by ``tests/integration/test_prometheus_e2e.py`` as a real ``celery worker -P prefork``
subprocess consuming ``e2e`` and the notification queue. Besides successes, retries and
give-ups it produces what the health dashboard needs:

- a CRITICAL failure, whose e-mail notification fails for good (the test points
  ``TELEMETRY_GUARD_EMAIL`` at a closed port with no retries): ``notifications_total``
  with ``outcome="failed"``;
- a span exporter that cannot reach its collector, so every span export fails:
  ``telemetry_errors_total{sink="span_exporter"}`` (the tasks are not affected);
- a circuit breaker (``e2e.dependency``, threshold 2, reset after an hour) that trips open
  and then rejects calls, served by the task's fallback;
- a burst of failing runs of one task (``e2e.storm``) that the fleet-wide retry budget
  refuses to retry in full: ``retry_budget_exhausted_total``.

A second deployment of the same code (the test's quiet job) consumes the queue named by
``TG_TEST_QUEUE`` and runs only the untroubled tasks, ``e2e.lookup`` among them: a call
through a healthy breaker that stays closed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from celery import Celery
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from telemetry_guard import CircuitBreaker, GuardedTask, RetryPolicy, TelemetryGuard

BROKER = os.environ["TG_TEST_BROKER"]
QUEUE = os.environ.get("TG_TEST_QUEUE", "e2e")
BREAKER = "e2e.dependency"
HEALTHY_BREAKER = "e2e.lookup"


def fast_retries(max_retries: int) -> RetryPolicy:
    """The default retryable errors, with delays short enough for a test."""
    return RetryPolicy(max_retries=max_retries, base_delay=0.05, max_delay=0.1)


class UnreachableCollector(SpanExporter):
    """A span exporter whose collector is down: every export raises."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise ConnectionRefusedError("span collector unreachable")

    def shutdown(self) -> None:
        """Nothing to release."""


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(UnreachableCollector()))
trace.set_tracer_provider(provider)

app = Celery("e2e_app", broker=BROKER, backend=BROKER)
app.conf.update(
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=1,
)
#: The budget of each task: 0.1 retry per first attempt, plus a reserve of 3 that refills at
#: 3 retries/s. The few retries of the other tasks fit; a burst of 30 storm runs does not.
RETRY_BUDGET = {"ratio": 0.1, "min_retries_per_second": 3.0, "ttl": 10.0}
guard = TelemetryGuard(app, retry_budget=RETRY_BUDGET)

#: Shared in Redis, so the worker's main process reports the state its children set.
dependency_breaker = CircuitBreaker(BREAKER, failure_threshold=2, reset_timeout=3600.0,
                                    redis_url=BROKER)
lookup_breaker = CircuitBreaker(HEALTHY_BREAKER, failure_threshold=2, reset_timeout=3600.0,
                                redis_url=BROKER)


@app.task(bind=True, base=GuardedTask, name="e2e.ok")
def ok(self: GuardedTask, n: int) -> int:
    """Succeeds."""
    return n


@app.task(bind=True, base=GuardedTask, name="e2e.flaky",
          retry_policy=fast_retries(3))
def flaky(self: GuardedTask) -> str:
    """Fails once with a retryable error, then succeeds: 1 failure, 1 retry, 0 give-ups."""
    if self.request.retries < 1:
        raise ConnectionError("upstream reset the connection")
    return "recovered"


@app.task(bind=True, base=GuardedTask, name="e2e.exhausted",
          retry_policy=fast_retries(1))
def exhausted(self: GuardedTask) -> None:
    """Always times out: one retry, then a give-up escalated to high."""
    raise TimeoutError("upstream did not answer")


@app.task(bind=True, base=GuardedTask, name="e2e.invalid")
def invalid(self: GuardedTask, payload: dict[str, str]) -> None:
    """Fails with a non-retryable error: a low give-up at once."""
    raise ValueError("payload failed validation")


@app.task(bind=True, base=GuardedTask, name="e2e.ledger", severity="critical")
def ledger(self: GuardedTask) -> None:
    """A critical failure (routed to e-mail by default)."""
    raise RuntimeError("ledger totals do not balance")


def dependency_fallback(*args: object, **kwargs: object) -> str:
    """What the dependency task returns while its breaker is open."""
    return "fallback"


@app.task(bind=True, base=GuardedTask, name="e2e.dependency", breaker=dependency_breaker,
          fallback=dependency_fallback, retry_policy=RetryPolicy(max_retries=0))
def dependency(self: GuardedTask) -> str:
    """Calls a dependency that is down: two failures trip the breaker, then calls are rejected."""
    raise ConnectionError("dependency is down")


@app.task(bind=True, base=GuardedTask, name="e2e.lookup", breaker=lookup_breaker)
def lookup(self: GuardedTask, key: str) -> str:
    """Calls a dependency that answers: a successful call through a breaker that stays closed."""
    return f"found {key}"


@app.task(bind=True, base=GuardedTask, name="e2e.storm",
          retry_policy=fast_retries(1))
def storm(self: GuardedTask) -> None:
    """One of a burst of runs failing at once: more retries than the retry budget allows."""
    raise ConnectionError("every replica refused the connection")
