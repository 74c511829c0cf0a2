"""RedactingSpanExporter on the spans opentelemetry-instrumentation-celery records itself."""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from telemetry_guard import RedactingSpanExporter, TelemetryGuard

SECRET = "canary-key-5c1e"



def span_text(span: Any) -> str:
    """Everything a span would carry to a backend, as one string."""
    return json.dumps({
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})}
                   for e in span.events],
        "status": span.status.description,
    }, default=str)


def test_secrets_the_instrumentation_records_are_redacted_before_export(
        celery_app: Celery, spans: Any, instrumented: None) -> None:
    """The instrumentation writes ``str(exc)`` into its exception event, which no one can
    change once recorded; wrapped, the exporter receives none of the secret and keeps the
    rest of each span."""
    TelemetryGuard(celery_app, redis_url=None)

    @celery_app.task(name="redact.plain", shared=False)
    def plain() -> None:
        raise RuntimeError(f"upstream refused api_key={SECRET}")

    @celery_app.task(bind=True, name="redact.retried", shared=False, max_retries=1,
                     default_retry_delay=0)
    def retried(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=ConnectionError(f"reset token={SECRET}"))
        return "ok"

    with start_worker(celery_app, pool="solo", perform_ping_check=False, loglevel="CRITICAL"):
        with pytest.raises(RuntimeError):
            plain.delay().get(timeout=20)
        assert retried.delay().get(timeout=20) == "ok"

    finished = spans.get_finished_spans()
    leaking = [s for s in finished if SECRET in span_text(s)]
    # The oracle: without the wrapper the instrumentation's own exception event carries the
    # secret (the guard already redacted the status text and celery.retry.reason it wrote).
    assert {s.name for s in leaking} == {"run/redact.plain"}

    received = InMemorySpanExporter()
    wrapper = RedactingSpanExporter(received)
    assert wrapper.export(finished) == SpanExportResult.SUCCESS
    out = received.get_finished_spans()
    assert len(out) == len(finished)
    assert [s.context.span_id for s in out] == [s.context.span_id for s in finished]
    assert all(SECRET not in span_text(s) for s in out)
    failed = next(s for s in out if s.name == "run/redact.plain")
    exception = next(e for e in failed.events if e.name == "exception")
    assert exception.attributes["exception.type"] == "RuntimeError"
    assert "upstream refused api_key=[REDACTED]" in exception.attributes["exception.message"]
    assert "Traceback" in exception.attributes["exception.stacktrace"]
    assert failed.attributes["celery.task_name"] == "redact.plain"
    first_run = next(s for s in out if s.name == "run/redact.retried"
                     and "celery.retry.reason" in (s.attributes or {}))
    assert "[REDACTED]" in first_run.attributes["celery.retry.reason"]
    clean = [s for s in finished if s not in leaking]
    assert clean and all(any(o is s for o in out) for s in clean)  # passed on untouched


def test_attributes_under_a_secret_key_are_replaced() -> None:
    """A span attribute named like a secret (a header an HTTP instrumentation records) is
    replaced whole, whatever its text; other attributes are kept."""
    finished = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(finished))
    with provider.get_tracer("test").start_as_current_span("call", attributes={
            "http.request.header.authorization": ("Bearer abc.def",),
            "http.url": "https://api.example/v1?page=2"}):
        pass
    received = InMemorySpanExporter()
    RedactingSpanExporter(received).export(finished.get_finished_spans())
    (out,) = received.get_finished_spans()
    assert out.attributes["http.request.header.authorization"] == "[REDACTED]"
    assert out.attributes["http.url"] == "https://api.example/v1?page=2"
