"""A worker app whose guard keeps its state behind Sentinel, for the failover test.

The broker is ``TG_FO_BROKER`` (a plain Redis apart from the guard's); the guard's Redis is
configured from the environment (``TELEMETRY_GUARD_REDIS_URL``, ``..._REDIS_OPTIONS``), as in
production. Logs are JSON lines on stdout, which the test reads.

``fo.work(n)`` makes one call through the shared breaker ``payments`` (a Redis round trip
while it is closed), then fails with ``ValueError``, never retried: every task leaves one
error-log record and one dead letter.
"""

from __future__ import annotations

import os

from celery import Celery

from telemetry_guard import (
    CircuitBreaker,
    GuardedTask,
    RetryPolicy,
    TelemetryGuard,
    configure_logging,
)

configure_logging()
app = Celery("failover_app", broker=os.environ["TG_FO_BROKER"])
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True,
                task_ignore_result=True, telemetry_guard_error_log_flush_interval=0.05)
guard = TelemetryGuard(app, tracing=False)
payments = CircuitBreaker("payments", failure_threshold=1000, reset_timeout=30.0)


@app.task(bind=True, base=GuardedTask, name="fo.work", retry_policy=RetryPolicy(max_retries=0))
def work(self: GuardedTask, n: int) -> None:
    payments.call(lambda: None)
    raise ValueError(f"failure {n}")
