"""Variant ``observed``: a plain Celery task (no base class) in an app the guard observes.

The guard is installed at import, as the README shows (``TelemetryGuard(app)``, settings
from ``app.conf``), with every sink on as in ``guarded``: error log on the private Redis,
Prometheus metrics, structlog JSON lines to a file, spans into an exporter that drops them.
The guard sees the task only through Celery's signals (``task_failure``, ``task_retry``).
"""

from __future__ import annotations

import os

from telemetry_guard import TelemetryGuard, configure_logging

from ._common import NOOP, install_tracing, log_file, make_app, run_noop

app = make_app("bench-observed")
app.conf.telemetry_guard_redis_url = os.environ["BENCH_ERRORLOG_URL"]
install_tracing()
configure_logging(stream=log_file("observed"))
guard = TelemetryGuard(app)


@app.task(name=NOOP, acks_late=True, ignore_result=True)
def noop(i: int, fail_every: int) -> None:
    """Does nothing; every ``fail_every``-th call raises ValueError."""
    run_noop(i, fail_every)
