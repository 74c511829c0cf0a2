"""What every benchmark app shares: names, settings from the environment, the task bodies.

Worker processes read ``BENCH_BROKER_URL`` (the private Redis), ``BENCH_ERRORLOG_URL``,
``BENCH_LOG_DIR`` (structlog JSON files) and, when set, ``BENCH_PROFILE`` (a path: the
measured window is run under cProfile and its stats written there) and ``BENCH_GC_STATS``
(time the garbage collector; the sentinel reports it).
"""

from __future__ import annotations

import cProfile
import gc
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

#: The queue the worker consumes, and the list messages are staged in (nobody consumes it).
QUEUE = "bench"
STAGING_QUEUE = "bench_staging"
NOOP = "bench.noop"
SENTINEL = "bench.sentinel"
#: Hash the sentinel writes: ``end`` (time.time()), ``llen``, ``processed``, ``pid``.
RESULT_KEY = "bench:result:"
PREFETCH_MULTIPLIER = 16

_processed = 0
_profiler: cProfile.Profile | None = None
_client: redis.Redis | None = None
#: Garbage collections since the last sentinel: seconds, runs, full (generation 2) runs.
_gc = {"seconds": 0.0, "runs": 0, "full": 0, "started": 0.0}


def _time_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc["started"] = time.perf_counter()
        return
    _gc["seconds"] += time.perf_counter() - _gc["started"]
    _gc["runs"] += 1
    _gc["full"] += info["generation"] == 2


def make_app(name: str) -> Celery:
    """A Celery app on the benchmark broker, with the settings every variant shares."""
    app = Celery(name, broker=os.environ["BENCH_BROKER_URL"])
    app.conf.update(
        worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
        task_default_queue=QUEUE,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )
    if os.environ.get("BENCH_GC_STATS") and _time_gc not in gc.callbacks:
        gc.callbacks.append(_time_gc)
    app.task(name=SENTINEL, acks_late=True, ignore_result=True)(sentinel)
    return app


def run_noop(i: int, fail_every: int) -> None:
    """The task body: count the call; every ``fail_every``-th task raises ValueError."""
    global _processed
    _processed += 1
    if fail_every and i % fail_every == fail_every - 1:
        raise ValueError(f"benchmark task {i} fails on purpose")


def sentinel(run_id: str, phase: str) -> None:
    """Record when it ran, the queue length then and how many tasks ran since the last one.

    ``phase`` is ``warm`` (end of warm-up: start the profiler when asked) or ``end``
    (end of the measured window: stop the profiler and write its stats).
    """
    global _processed, _profiler, _client
    end = time.time()
    processed, _processed = _processed, 0
    profile_path = os.environ.get("BENCH_PROFILE")
    if profile_path:
        if phase == "warm":
            _profiler = cProfile.Profile()
            _profiler.enable()
        elif _profiler is not None:
            _profiler.disable()
            _profiler.dump_stats(profile_path)
            _profiler = None
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_BROKER_URL"])
    _client.hset(RESULT_KEY + run_id, mapping={
        "end": repr(end), "llen": _client.llen(QUEUE), "processed": processed,
        "pid": os.getpid(), "gc_ms": repr(_gc["seconds"] * 1000), "gc_runs": _gc["runs"],
        "gc_full": _gc["full"]})
    _gc.update(seconds=0.0, runs=0, full=0)


class DroppingExporter(SpanExporter):
    """A span exporter that accepts every batch and keeps nothing."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""


def install_tracing() -> TracerProvider:
    """Set a global TracerProvider whose BatchSpanProcessor feeds a DroppingExporter."""
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))
    trace.set_tracer_provider(provider)
    return provider


def log_file(variant: str) -> Any:
    """The file a variant's structlog JSON lines go to (opened for appending)."""
    directory = Path(os.environ.get("BENCH_LOG_DIR") or ".")
    return (directory / f"{variant}.jsonl").open("a")
