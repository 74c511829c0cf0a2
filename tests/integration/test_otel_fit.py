"""OpenTelemetry as users read it: messaging semantic conventions on the task's span,
namespaced span-event attributes, and one ``exception`` event per failed attempt, with and
without opentelemetry-instrumentation-celery."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from opentelemetry.instrumentation.celery import CeleryInstrumentor

from telemetry_guard import CircuitBreaker, GuardedTask, RetryPolicy, TelemetryGuard
from tests.flaky_task import SECRET, register_flaky

NO_RETRY = RetryPolicy(max_retries=0)
INSTRUMENTATION_SCOPE = "opentelemetry.instrumentation.celery"
GUARD_EVENTS = ("task.retry", "task.gave_up", "breaker.state_changed")


@contextmanager
def instrumented() -> Iterator[None]:
    """opentelemetry-instrumentation-celery active (after the guard), then removed."""
    instrumentor = CeleryInstrumentor()
    instrumentor.instrument()
    try:
        yield
    finally:
        instrumentor.uninstrument()


def worker(app: Celery) -> Any:
    return start_worker(app, pool="solo", perform_ping_check=False, loglevel="CRITICAL")


def runs(spans: Any, task_name: str) -> list[Any]:
    """The finished run spans of ``task_name``, in the order the attempts ran."""
    found = [s for s in spans.get_finished_spans() if s.name == f"run/{task_name}"]
    return sorted(found, key=lambda s: s.start_time)


def events(span: Any, name: str) -> list[Any]:
    return [e for e in span.events if e.name == name]


def assert_messaging(span: Any, task_id: str, task_name: str, retries: int) -> None:
    attributes = span.attributes
    assert attributes["messaging.system"] == "celery"
    assert attributes["messaging.message.id"] == task_id
    assert attributes["messaging.destination.name"] == "tests"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["celery.task_name"] == task_name
    assert attributes["celery.task_id"] == task_id
    assert attributes["celery.retries"] == retries


def assert_namespaced(span: Any) -> None:
    """The guard's span events add only ``telemetry_guard.*`` (and ``exception.*``) keys."""
    for event in span.events:
        if event.name in GUARD_EVENTS:
            loose = [k for k in event.attributes
                     if not k.startswith(("telemetry_guard.", "exception."))]
            assert not loose, (event.name, loose)


def test_guarded_task_span_has_messaging_conventions_and_namespaced_events(
        celery_app: Celery, spans: Any) -> None:
    """No instrumentation: the guard's span per run, semantic conventions, namespaced events."""
    TelemetryGuard(celery_app)
    breaker = CircuitBreaker("fit.otel.ledger", failure_threshold=1, reset_timeout=60.0,
                             storage="memory")

    flaky = register_flaky(celery_app, "fit.otel.flaky")

    @celery_app.task(base=GuardedTask, name="fit.otel.breaker", breaker=breaker,
                     retry_policy=NO_RETRY, shared=False)
    def guarded_call() -> None:
        raise ConnectionError("upstream down")

    with worker(celery_app):
        retried = flaky.delay()
        assert retried.get(timeout=20) == "ok"
        gave_up = guarded_call.delay()
        with pytest.raises(ConnectionError):
            gave_up.get(timeout=20)

    first, second = runs(spans, "fit.otel.flaky")
    assert_messaging(first, retried.id, "fit.otel.flaky", 0)
    assert_messaging(second, retried.id, "fit.otel.flaky", 1)
    [exception] = events(first, "exception")
    assert SECRET not in exception.attributes["exception.message"]
    assert SECRET not in exception.attributes["exception.stacktrace"]
    [retry] = events(first, "task.retry")
    assert retry.attributes["telemetry_guard.attempt"] == 1
    assert retry.attributes["telemetry_guard.max_retries"] == 1
    assert 0.0 <= retry.attributes["telemetry_guard.delay_s"] <= 0.02
    assert retry.attributes["exception.type"] == "ConnectionError"
    assert not events(second, "exception") and second.status.status_code.name != "ERROR"

    [run] = runs(spans, "fit.otel.breaker")
    assert_messaging(run, gave_up.id, "fit.otel.breaker", 0)
    assert len(events(run, "exception")) == 1
    [given_up] = events(run, "task.gave_up")
    assert given_up.attributes["telemetry_guard.reason"] == "max_retries_exceeded"
    [change] = events(run, "breaker.state_changed")
    assert dict(change.attributes) == {"telemetry_guard.breaker": "fit.otel.ledger",
                                       "telemetry_guard.from_state": "closed",
                                       "telemetry_guard.to_state": "open"}
    for span in (first, second, run):
        assert_namespaced(span)


def test_instrumentation_span_has_one_exception_event_per_failed_attempt(
        celery_app: Celery, spans: Any) -> None:
    """With the instrumentation: its span per run, annotated; one ``exception`` per failure."""
    TelemetryGuard(celery_app)

    flaky = register_flaky(celery_app, "fit.inst.flaky")

    @celery_app.task(base=GuardedTask, name="fit.inst.give_up", retry_policy=NO_RETRY,
                     shared=False)
    def give_up() -> None:
        raise ConnectionError("ledger unreachable")

    @celery_app.task(name="fit.inst.plain", shared=False)
    def plain() -> None:
        raise ValueError(f"bad row api_key={SECRET}")

    @celery_app.task(bind=True, name="fit.inst.autoretry", autoretry_for=(ConnectionError,),
                     retry_kwargs={"max_retries": 1, "countdown": 0.01}, shared=False)
    def autoretry(self: Any) -> str:
        if self.request.retries == 0:
            raise ConnectionError(f"broker hiccup token={SECRET}")
        return "ok"

    with instrumented(), worker(celery_app):
        retried = flaky.delay()
        assert retried.get(timeout=20) == "ok"
        gave_up = give_up.delay()
        with pytest.raises(ConnectionError):
            gave_up.get(timeout=20)
        failed = plain.delay()
        with pytest.raises(ValueError):
            failed.get(timeout=20)
        auto = autoretry.delay()
        assert auto.get(timeout=20) == "ok"

    every_run = [s for s in spans.get_finished_spans() if s.name.startswith("run/")]
    assert {s.instrumentation_scope.name for s in every_run} == {INSTRUMENTATION_SCOPE}

    # (i) GuardedTask retried, then succeeded: the guard's redacted exception, task.retry.
    first, second = runs(spans, "fit.inst.flaky")
    assert_messaging(first, retried.id, "fit.inst.flaky", 0)
    assert_messaging(second, retried.id, "fit.inst.flaky", 1)
    [exception] = events(first, "exception")
    assert exception.attributes["exception.type"] == "ConnectionError"
    assert SECRET not in exception.attributes["exception.message"]
    assert len(events(first, "task.retry")) == 1
    assert not events(second, "exception")

    # (ii) GuardedTask giving up: the instrumentation's exception event, the guard's give-up.
    [run] = runs(spans, "fit.inst.give_up")
    assert_messaging(run, gave_up.id, "fit.inst.give_up", 0)
    [exception] = events(run, "exception")
    assert exception.attributes["exception.message"] == "ledger unreachable"
    [given_up] = events(run, "task.gave_up")
    assert given_up.attributes["telemetry_guard.reason"] == "max_retries_exceeded"
    assert run.status.status_code.name == "ERROR"

    # (iii) a plain task failing: one exception event; the span annotated like a
    # GuardedTask's; the status text the instrumentation wrote is redacted (its exception
    # event cannot be changed: RedactingSpanExporter's job).
    [run] = runs(spans, "fit.inst.plain")
    assert len(events(run, "exception")) == 1 and run.status.status_code.name == "ERROR"
    assert_messaging(run, failed.id, "fit.inst.plain", 0)
    assert SECRET not in (run.status.description or "")

    # (iv) a plain task with autoretry_for, retried once: one exception event on that run.
    retried_run, succeeded_run = runs(spans, "fit.inst.autoretry")
    [exception] = events(retried_run, "exception")
    assert exception.attributes["exception.type"] == "ConnectionError"
    assert SECRET not in exception.attributes["exception.message"]
    assert_messaging(retried_run, auto.id, "fit.inst.autoretry", 0)
    assert_messaging(succeeded_run, auto.id, "fit.inst.autoretry", 1)
    reason = retried_run.attributes["celery.retry.reason"]
    assert "broker hiccup token=[REDACTED]" in reason and SECRET not in reason
    assert not events(succeeded_run, "exception")

    for span in every_run:
        assert_namespaced(span)
