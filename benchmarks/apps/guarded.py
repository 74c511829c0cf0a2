"""Variant ``guarded``: GuardedTask with every sink on.

Error log on the private Redis, Prometheus metrics in the default registry, structlog
JSON lines to a file, spans through a BatchSpanProcessor into an exporter that drops them.
ValueError is not retried by the default RetryPolicy, so a failing task is given up at once.
"""

from __future__ import annotations

import os
from typing import Any

from celery import signals

from telemetry_guard import GuardedTask, TelemetryGuard, configure_logging

from ._common import NOOP, install_tracing, log_file, make_app, run_noop

app = make_app("bench-guarded")


@app.task(base=GuardedTask, name=NOOP, acks_late=True, ignore_result=True)
def noop(i: int, fail_every: int) -> None:
    """Does nothing; every ``fail_every``-th call raises ValueError."""
    run_noop(i, fail_every)


@signals.worker_init.connect(weak=False)
def set_up_telemetry(**_: Any) -> None:
    """Tracing, structlog and the guard, in the worker process before it consumes."""
    install_tracing()
    configure_logging(stream=log_file("guarded"))
    TelemetryGuard(app, redis_url=os.environ["BENCH_ERRORLOG_URL"])
