"""Variant ``floor``: a plain task whose body does the least a traced, measured run costs.

One OpenTelemetry SDK span with the attributes the guard gives a run (current while the
body runs, so its own spans would nest) and one runtime histogram observation, written in
the body itself: no signal receiver, no log context, no failure handling. The tracer
provider is the telemetry variants' (BatchSpanProcessor into an exporter that drops).
What ``guarded`` costs above this is the guard's own; this much any tracing and metrics
of a task run cost, whoever writes them.
"""

from __future__ import annotations

import time
from typing import Any

from celery import signals
from opentelemetry import context, trace
from prometheus_client import Histogram

from ._common import NOOP, install_tracing, make_app, run_attributes, run_noop

app = make_app("bench-floor")
RUNTIME = Histogram("floor_task_runtime_seconds", "Task run time.", ["task", "outcome"])
_tracer: trace.Tracer | None = None


@app.task(bind=True, name=NOOP, acks_late=True, ignore_result=True)
def noop(self: Any, i: int, fail_every: int) -> None:
    """Does nothing, inside one span and one histogram observation; every
    ``fail_every``-th call raises ValueError."""
    request = self.request
    assert _tracer is not None
    span = _tracer.start_span("run/" + NOOP, kind=trace.SpanKind.CONSUMER,
                              attributes=run_attributes(request))
    token = context.attach(trace.set_span_in_context(span))
    started = time.perf_counter()
    outcome = "failure"
    try:
        run_noop(i, fail_every)
        outcome = "success"
    finally:
        RUNTIME.labels(NOOP, outcome).observe(time.perf_counter() - started)
        span.end()
        context.detach(token)


@signals.worker_init.connect(weak=False)
def set_up_tracing(**_: Any) -> None:
    """The telemetry variants' tracer provider, in the worker process before it consumes."""
    global _tracer
    install_tracing()
    _tracer = trace.get_tracer("bench.floor")


@signals.worker_process_shutdown.connect(weak=False)
@signals.worker_shutdown.connect(weak=False)
def flush_spans(**_: Any) -> None:
    """Export the spans still queued before the process exits (the guard does the same)."""
    provider = trace.get_tracer_provider()
    if hasattr(provider, "force_flush"):
        provider.force_flush()
