"""A Celery app set up as the README shows: the guard right after ``Celery(...)``, then config.

Its plain tasks live in ``tests.apps.plain_tasks``, which never imports telemetry_guard;
the guard reads its settings (``telemetry_guard_redis_url`` among them) only once the
app is configured, so configuration set after ``TelemetryGuard(app)`` counts.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery

from telemetry_guard import GuardedTask, TelemetryGuard

app = Celery("observed_app", include=["tests.apps.plain_tasks"])
guard = TelemetryGuard(app)

app.conf.update(
    broker_url=os.environ["TG_TEST_BROKER"],
    result_backend=os.environ["TG_TEST_BROKER"],
    telemetry_guard_redis_url=os.environ["TG_TEST_ERROR_LOG"],
    telemetry_guard_error_log_flush_interval=0.05,
    task_default_queue="observed",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(bind=True, base=GuardedTask, name="observed.guarded_autoretry",
          autoretry_for=(ConnectionError,), max_retries=1, default_retry_delay=0)
def guarded_autoretry(self: Any) -> None:
    """A GuardedTask whose policy comes from Celery's options: one retry, then give up."""
    redis.Redis.from_url(self.app.conf.broker_url).incr(f"runs:{self.request.id}")
    raise ConnectionError("payment gateway unreachable")
