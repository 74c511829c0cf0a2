"""What every benchmark app shares: names, settings from the environment, the task bodies.

Worker processes read ``BENCH_BROKER_URL`` (the private Redis), ``BENCH_ERRORLOG_URL``,
``BENCH_LOG_DIR`` (structlog JSON files), ``BENCH_COUNTERS`` (the counters file every
process of the worker shares, see ``_counters``), ``BENCH_POOL`` and, when set,
``BENCH_PROFILE`` (a path: the measured window is run under cProfile, see
:func:`sentinel`) and ``BENCH_GC_STATS`` (time the garbage collector into the counters).
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
from celery import Celery, signals
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from ._counters import DONE, MEASURING, Counters

#: The queue the worker consumes, and the list messages are staged in (nobody consumes it).
QUEUE = "bench"
STAGING_QUEUE = "bench_staging"
NOOP = "bench.noop"
SENTINEL = "bench.sentinel"
#: Hash the sentinel writes: ``end`` (time.time()), ``llen``, ``processed`` (no-op tasks run
#: so far by every process of the worker), ``pid``.
RESULT_KEY = "bench:result:"
PREFETCH_MULTIPLIER = 16
#: Seconds the sentinel waits for the no-op tasks still running in other children.
SENTINEL_WAIT = 30.0

_PROFILE = os.environ.get("BENCH_PROFILE") or None
_profiler: cProfile.Profile | None = None
_client: redis.Redis | None = None
_counters: Counters | None = None
_gc_started = 0.0


def counters() -> Counters:
    """The counters of this worker (mapped once, in the main process, before any fork)."""
    global _counters
    if _counters is None:
        _counters = Counters(os.environ.get("BENCH_COUNTERS"))
    return _counters


def _time_gc(phase: str, info: dict[str, Any]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
        return
    shared = counters()
    shared.add("gc_ns", int((time.perf_counter() - _gc_started) * 1e9))
    shared.add("gc_runs")
    if info["generation"] == 2:
        shared.add("gc_full")


def make_app(name: str) -> Celery:
    """A Celery app on the benchmark broker, with the settings every variant shares."""
    app = Celery(name, broker=os.environ["BENCH_BROKER_URL"])
    app.conf.update(
        worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
        task_default_queue=QUEUE,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )
    counters()
    if os.environ.get("BENCH_GC_STATS") and _time_gc not in gc.callbacks:
        gc.callbacks.append(_time_gc)
    if _PROFILE:
        signals.task_received.connect(_profile_if_measuring, weak=False)
        signals.worker_process_shutdown.connect(_stop_profile, weak=False)
        signals.worker_shutdown.connect(_stop_profile, weak=False)
    app.task(name=SENTINEL, acks_late=True, ignore_result=True)(sentinel)
    return app


def run_noop(i: int, fail_every: int) -> None:
    """The task body: count the call; every ``fail_every``-th task raises ValueError."""
    if _PROFILE and _profiler is None:
        _profile_if_measuring()
    counters().count_task()
    if fail_every and i % fail_every == fail_every - 1:
        raise ValueError(f"benchmark task {i} fails on purpose")


def run_attributes(request: Any) -> dict[str, Any]:
    """The attributes the guard gives a task run's span (DESIGN.md), for ``floor``."""
    return {"celery.task_name": NOOP, "celery.retries": request.retries or 0,
            "messaging.system": "celery", "messaging.operation.type": "process",
            "celery.task_id": request.id, "messaging.message.id": request.id,
            "messaging.destination.name": request.delivery_info.get("routing_key")}


def sentinel(run_id: str, phase: str, expected: int | None = None) -> None:
    """Record when the no-op tasks before it have all run, and how many ran.

    ``expected``: the no-op tasks published before this sentinel since the worker started;
    each is counted when its body runs (``run_noop``), in whichever process. On the solo
    pool they have all run already. In a prefork worker (``-O fair``: a child gets a task
    only when idle, in the order received) the tasks just before this one may still be
    running in the other children, so the sentinel waits until every process together has
    counted ``expected`` before it takes the time. What that leaves out is the tail after
    the body (Celery's bookkeeping, the guard's span end, metrics and failure recording) of
    at most one task per other child: a few hundred µs in a window of seconds. A task queued
    behind the sentinel in its own child would make it wait in vain: after SENTINEL_WAIT
    it reports the lower count and the harness stops with an error, never a wrong number.

    ``phase`` is ``warm`` (end of the warm-up: the measured window starts, and with
    ``BENCH_PROFILE`` this process profiles from now, the others from their next task) or
    ``end`` (window over: this process writes its profile; the others when they exit).
    """
    global _client
    shared = counters()
    processed = (shared.total("processed") if expected is None
                 else shared.wait_total("processed", expected, SENTINEL_WAIT))
    end = time.time()
    if phase == "warm":
        shared.phase = MEASURING
        if _PROFILE:
            _start_profile()
    else:
        shared.phase = DONE
        if _PROFILE:
            _stop_profile()
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_BROKER_URL"])
    _client.hset(RESULT_KEY + run_id, mapping={
        "end": repr(end), "llen": _client.llen(QUEUE), "processed": processed,
        "pid": os.getpid()})


_MAIN_PID = os.getpid()


def _profile_path() -> str:
    """``BENCH_PROFILE`` on the solo pool; per process (``<stem>.main-<pid>.prof``,
    ``<stem>.child-<pid>.prof``) when a prefork worker has several."""
    assert _PROFILE is not None
    if os.environ.get("BENCH_POOL", "solo") == "solo":
        return _PROFILE
    stem = _PROFILE[:-5] if _PROFILE.endswith(".prof") else _PROFILE
    role = "main" if os.getpid() == _MAIN_PID else "child"
    return f"{stem}.{role}-{os.getpid()}.prof"


def _start_profile() -> None:
    global _profiler
    if _profiler is None:
        _profiler = cProfile.Profile()
        _profiler.enable()


def _profile_if_measuring(**_: Any) -> None:
    """Start this process's profiler once the measured window has begun."""
    if _profiler is None and counters().phase == MEASURING:
        _start_profile()


def _stop_profile(**_: Any) -> None:
    """Stop this process's profiler, if running, and write its stats."""
    global _profiler
    if _profiler is not None:
        _profiler.disable()
        _profiler.dump_stats(_profile_path())
        _profiler = None


class DroppingExporter(SpanExporter):
    """A span exporter that counts the spans of every batch and keeps nothing."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        counters().add("spans", len(spans))
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
