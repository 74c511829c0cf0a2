"""A Celery app for the load test: one guarded task, one in five runs failing.

Run by ``celery -A tests.apps.load_app worker -P prefork`` subprocesses. ``TG_TEST_BROKER``
is the broker (and, by default, the telemetry Redis); every other setting comes the usual
way (``TELEMETRY_GUARD_*`` variables, e.g. ``TELEMETRY_GUARD_ERROR_LOG_MAXLEN``). Log lines
are JSON (``configure_logging``) so that the test can count ``task.failed`` events.
"""

from __future__ import annotations

import os

from celery import Celery

from telemetry_guard import GuardedTask, RetryPolicy, TelemetryGuard, configure_logging

BROKER = os.environ["TG_TEST_BROKER"]
QUEUE = "load"
TASK = "load.work"
#: Every FAIL_EVERY-th task (``n % FAIL_EVERY == 0``) fails: 20 %.
FAIL_EVERY = 5

configure_logging()
app = Celery("load_app", broker=BROKER)
app.conf.update(
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_default_queue=QUEUE,
    task_ignore_result=True,
    worker_prefetch_multiplier=int(os.environ.get("TG_TEST_PREFETCH", "8")),
)
guard = TelemetryGuard(app)


class OrderRejected(ValueError):
    """The failure of the workload: not retryable, so each one is a failure and a give-up."""


@app.task(bind=True, base=GuardedTask, name=TASK, retry_policy=RetryPolicy(max_retries=0))
def work(self: GuardedTask, n: int) -> int:
    """Succeeds, except when ``n`` is a multiple of :data:`FAIL_EVERY`."""
    if n % FAIL_EVERY == 0:
        raise OrderRejected(f"order {n} rejected")
    return n
