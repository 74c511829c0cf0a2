"""Microseconds per call of GuardedTask's code paths, in-process, no broker in the loop.

Sets up the `guarded` benchmark app exactly as its worker does (every sink on, error log on a
private Redis), pushes a worker-like request and times, in loops: the task call as Celery's
tracer makes it (success and failure), against a plain task's ``run``, and each step of the
guarded paths. Medians of 5 loops. Explains `throughput.py`'s gap; not a throughput number.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

from billiard.einfo import ExceptionInfo  # noqa: E402
from opentelemetry import context as otel_context  # noqa: E402
from opentelemetry import trace  # noqa: E402

from benchmarks._redis import start_redis  # noqa: E402


def per_call(fn: Callable[[], Any], loops: int) -> float:
    """Median over 5 loops of the microseconds one ``fn()`` takes."""
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - started) / loops * 1e6)
    return statistics.median(samples)


def raised(fn: Callable[[], Any]) -> BaseException:
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("expected an exception")


def swallow(fn: Callable[[], Any]) -> Callable[[], None]:
    def call() -> None:
        try:
            fn()
        except ValueError:
            pass
    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=4000, help="calls per timed loop (4000)")
    n = parser.parse_args(argv).loops
    server = start_redis()
    logdir = tempfile.mkdtemp(prefix="tg-callpath-")
    os.environ.update(BENCH_BROKER_URL=server.url(0), BENCH_ERRORLOG_URL=server.url(1),
                      BENCH_LOG_DIR=logdir)
    try:
        from celery import signals

        from benchmarks.apps import bare, guarded
        from benchmarks.apps._common import run_attributes
        from telemetry_guard import GuardedTask
        from telemetry_guard.core.tracebacks import format_traceback
        from telemetry_guard.integration import log_context
        from telemetry_guard.sinks.tracing import TaskSpan

        guarded.set_up_telemetry()
        guard = guarded.app._telemetry_guard  # noqa: SLF001
        task = guarded.noop
        request = dict(id=str(uuid.uuid4()), retries=0, called_directly=False,
                       hostname="celery@bench",
                       delivery_info={"routing_key": "bench", "exchange": "", "priority": 0})
        task.push_request(**request)
        bare.noop.push_request(**request)
        req = task.request
        rows: list[tuple[str, float]] = []

        def row(label: str, fn: Callable[[], Any], loops: int = n) -> None:
            rows.append((label, per_call(fn, loops)))
            print(f"{rows[-1][1]:9.1f} µs  {label}", flush=True)

        print("-- success path, as a pool child runs it (warm: fastest of 40 loops)")
        real_task = task._get_current_object()  # what Celery's tracer holds, not the proxy
        if not isinstance(real_task, GuardedTask) or isinstance(
                bare.noop._get_current_object(), GuardedTask):
            raise RuntimeError("the guarded and bare apps' no-op tasks got mixed up")
        provider = trace.get_tracer_provider()

        def fastest(label: str, fn: Callable[[], Any], loops: int = 1000) -> None:
            samples = []
            for _ in range(40):
                provider.force_flush()  # keep the batch processor's queue from filling
                started = time.perf_counter()
                for _ in range(loops):
                    fn()
                samples.append((time.perf_counter() - started) / loops * 1e6)
            rows.append((label, min(samples)))
            print(f"{rows[-1][1]:9.1f} µs  {label}", flush=True)

        prerun = functools.partial(signals.task_prerun.send, sender=real_task, task_id=req.id,
                                   task=real_task, args=(1, 0), kwargs={})
        postrun = functools.partial(signals.task_postrun.send, sender=real_task,
                                    task_id=req.id, task=real_task, args=(1, 0), kwargs={},
                                    retval=None, state="SUCCESS")

        def worker_path() -> None:
            prerun()
            real_task.run(1, 0)
            postrun()

        fastest("guarded: task_prerun + task.run(i, 0) + task_postrun", worker_path)
        fastest("  task.run(i, 0)  [GuardedRun: what Celery's tracer calls]",
                lambda: real_task.run(1, 0))
        tracer = trace.get_tracer("bench.floor")
        runtime = guard.runtime(task.name, "success")

        def floor() -> None:  # benchmarks/apps/floor.py's body, around nothing
            span = tracer.start_span("run/" + task.name, kind=trace.SpanKind.CONSUMER,
                                     attributes=run_attributes(req))
            token = otel_context.attach(trace.set_span_in_context(span))
            started = time.perf_counter()
            runtime.observe(time.perf_counter() - started)
            span.end()
            otel_context.detach(token)

        fastest("    floor: SDK span (attributes, attached, ended) + histogram observation",
                floor)
        fastest("    TaskSpan(...) + end()  [guard.start_span]",
                lambda: TaskSpan(task.name, req.id, 0, req).end())
        span = TaskSpan(task.name, req.id, 0, req)
        span.end()

        def log_context_of_a_run() -> None:
            log_context.restore(log_context.bind_run(req.id, task.name, span.span))
            log_context.unbind_task(req.id)

        fastest("    log context: bind 4 ids, restore the span's, unbind the task's",
                log_context_of_a_run)
        fastest("    guard.runtime(name, 'success').observe(x)",
                lambda: guard.runtime(task.name, "success").observe(0.001))
        fastest("  task_prerun sent to the guard's receiver", prerun)
        fastest("  task_postrun sent to the guard's receiver", postrun)
        fastest("    guard's task_prerun receiver alone",
                lambda: guard.signals.on_task_prerun(sender=real_task, task_id=req.id))
        fastest("    guard's task_postrun receiver alone",
                lambda: guard.signals.on_task_postrun(sender=real_task, task_id=req.id,
                                                      state="SUCCESS"))
        fastest("bare: task.run(i, 0)", lambda: bare.noop.run(1, 0))

        print("-- failure path (ValueError, given up: not retryable)")
        n_fail = max(n // 4, 200)
        row("bare: task.run(4, 5) raising", swallow(lambda: bare.noop.run(4, 5)), n_fail)
        row("guarded: task(4, 5) raising", swallow(lambda: task(4, 5)), n_fail)
        # Depths as in the worker: format_traceback sees __call__ → noop → run_noop (3 frames);
        # Celery's tracer catches bare's exception 2 frames deep, the guarded one 5 frames deep.
        exc = raised(functools.partial(task.run, 4, 5))
        bare_exc = raised(functools.partial(bare.noop.run, 4, 5))
        guarded_exc = raised(functools.partial(task, 4, 5))
        guard.flush()

        def event_of() -> Any:
            return guard.events.build(task, exc, args=(4, 5), kwargs={}, request=req,
                                      decision="give_up", reason="not_retryable",
                                      max_retries=3)

        event = event_of()
        row("  guard.events.build(...)", event_of, n_fail)
        row("    format_traceback(exc)", lambda: format_traceback(exc), n_fail)
        row("    traceback_redactor.redact_text(traceback)",
            lambda: guard.traceback_redactor.redact_text(event.traceback), n_fail)
        row("    redactor.redact_text(message)",
            lambda: guard.redactor.redact_text(event.message), n_fail)
        span_only = per_call(lambda: TaskSpan(task.name, req.id, 0, req).end(), n_fail)

        def in_span(fn: Callable[[], Any]) -> Callable[[], None]:
            def call() -> None:
                span = TaskSpan(task.name, req.id, 0, req)
                fn()
                span.end()
            return call

        for sink in guard.dispatcher.sinks:
            label = f"  {type(sink).__name__}.on_failure(event)"
            if sink.name == "tracing":  # needs an active span to do anything
                cost = per_call(in_span(lambda sink=sink: sink.on_failure(event)), n_fail)
                rows.append((label, cost - span_only))
                print(f"{cost - span_only:9.1f} µs  {label}  (inside a span, span excluded)",
                      flush=True)
            else:
                row(label, lambda sink=sink: sink.on_failure(event), n_fail)
            guard.flush()
        cost = per_call(in_span(lambda: guard.record(event)), n_fail)
        print(f"{cost - span_only:9.1f} µs  guard.record(event)  [every sink]"
              "  (inside a span, span excluded)", flush=True)
        guard.flush()
        print("-- Celery's own failure handling (handle_failure → billiard ExceptionInfo)")
        row("  ExceptionInfo(bare exception, 2 frames)",
            lambda: ExceptionInfo((type(bare_exc), bare_exc, bare_exc.__traceback__)), n_fail)
        row("  ExceptionInfo(guarded exception, 5 frames)",
            lambda: ExceptionInfo((type(guarded_exc), guarded_exc, guarded_exc.__traceback__)),
            n_fail)
        guard.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
