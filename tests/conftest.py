"""Shared fixtures: a private redis-server, a Celery app on it, in-memory spans."""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterator, Sequence

import pytest
from celery import Celery
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.servers import RedisServer, start_redis

#: Fixtures of the breaker tests (``heard``, ``counted``).
pytest_plugins = ["tests.breakers"]
#: Celery's own tests with the guard installed: ``make test-peers`` runs them.
collect_ignore = ["peers"]


class ToggleableFailingExporter(SpanExporter):
    """A span exporter that raises while ``failing`` is set (a broken collector)."""

    failing = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.failing:
            raise ConnectionRefusedError("collector unreachable")
        return SpanExportResult.SUCCESS


_SPANS = InMemorySpanExporter()
_FAILING = ToggleableFailingExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_SPANS))
_PROVIDER.add_span_processor(SimpleSpanProcessor(_FAILING))
trace.set_tracer_provider(_PROVIDER)

_dbs = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server this session started on a free port."""
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """An empty database of the private server (this session started it, so it may flush)."""
    db = next(_dbs) % 64
    redis_server.client(db).flushdb()
    return f"{redis_server.url}/{db}"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The in-memory span exporter, emptied for this test."""
    _SPANS.clear()
    yield _SPANS
    _SPANS.clear()


@pytest.fixture
def instrumented() -> Iterator[None]:
    """opentelemetry-instrumentation-celery active for this test (before any guard)."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()
    instrumentor.instrument()
    yield
    instrumentor.uninstrument()


@pytest.fixture
def celery_app(redis_url: str) -> Iterator[Celery]:
    """A Celery app whose broker, result backend and telemetry Redis is the private server."""
    app = Celery("tests", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_default_queue="tests",
        result_expires=300,
        accept_content=["json", "pickle"],
        result_accept_content=["json", "pickle"],
    )
    yield app
    guard = getattr(app, "_telemetry_guard", None)
    if guard is not None:
        guard.close()
    app.close()
    gc.collect()  # drop AsyncResults while their backend can still be reached


@pytest.fixture
def failing_span_exporter() -> Iterator[ToggleableFailingExporter]:
    """Makes every span export raise for the duration of the test."""
    _FAILING.failing = True
    yield _FAILING
    _FAILING.failing = False
