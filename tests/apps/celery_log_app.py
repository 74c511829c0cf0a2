"""A Celery app whose tasks fail with secrets in their text, for a real worker's own log."""

from __future__ import annotations

import os

from celery import Celery

from telemetry_guard import GuardedTask, RetryPolicy, TelemetryGuard

BROKER = os.environ["TG_TEST_BROKER"]
#: A value that must never appear in the worker's log.
SECRET = os.environ.get("TG_TEST_SECRET", "tok-9f8e7d6c5b4a39281706")

app = Celery("celery_log_app", broker=BROKER, backend=BROKER)
app.conf.update(broker_connection_retry_on_startup=True, task_default_queue="celery-logs")
guard = TelemetryGuard(app)


@app.task(bind=True, base=GuardedTask, name="logs.guarded",
          retry_policy=RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.02,
                                   retry_on=(ConnectionError,)))
def guarded(self: GuardedTask, order_id: int, password: str = "") -> None:
    """Fails twice with the secret in the message: one retry, then a give-up."""
    raise ConnectionError(f"upstream refused order {order_id}: token={SECRET}")


@app.task(name="logs.plain")
def plain(url: str, api_key: str = "") -> None:
    """A task without the guard's base class, failing with a secret in a URL."""
    raise OSError(f"cannot reach {url} (Authorization: Bearer {SECRET})")


@app.task(name="logs.ok")
def ok(n: int) -> int:
    """Succeeds."""
    return n
