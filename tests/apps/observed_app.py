"""A Celery app set up as the README shows: the guard right after ``Celery(...)``, then config.

Its plain tasks live in ``tests.apps.plain_tasks``, which never imports telemetry_guard;
the guard reads its settings (``telemetry_guard_redis_url`` among them) only once the
app is configured, so configuration set after ``TelemetryGuard(app)`` counts.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from telemetry_guard import GuardedTask, TelemetryGuard
from tests.apps.plain_tasks import DeclinedError, count_run

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
    count_run(self)
    raise ConnectionError("payment gateway unreachable")


@app.task(bind=True, base=GuardedTask, name="observed.guarded_backoff",
          autoretry_for=(ConnectionError,), max_retries=2, retry_backoff=True,
          retry_backoff_max=0, retry_jitter=True)
def guarded_backoff(self: Any) -> None:
    """Celery's exponential backoff (capped at 0 s) as a GuardedTask's policy."""
    count_run(self)
    raise ConnectionError("warehouse API unreachable")


@app.task(bind=True, base=GuardedTask, name="observed.guarded_dont_autoretry",
          autoretry_for=(ConnectionError,), dont_autoretry_for=(DeclinedError,),
          max_retries=2, default_retry_delay=0)
def guarded_dont_autoretry(self: Any) -> None:
    """An excluded subclass: given up at once, not retried by Celery or by the guard."""
    count_run(self)
    raise DeclinedError("card declined")


@app.task(bind=True, base=GuardedTask, name="observed.guarded_retry_kwargs",
          autoretry_for=(ConnectionError,), retry_kwargs={"max_retries": 1, "countdown": 0})
def guarded_retry_kwargs(self: Any) -> None:
    """``retry_kwargs`` as a GuardedTask's policy: one retry, then give up."""
    count_run(self)
    raise ConnectionError("mail relay unreachable")


@app.task(bind=True, base=GuardedTask, name="observed.guarded_manual_retry", max_retries=2)
def guarded_manual_retry(self: Any) -> None:
    """A GuardedTask retrying itself by hand: two retries, then the guard gives up."""
    count_run(self)
    try:
        raise KeyError("order-17")
    except KeyError as exc:
        raise self.retry(exc=exc, countdown=0) from exc
