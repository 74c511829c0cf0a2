"""A Celery app for the CLI tests: a guarded task behind a breaker, configured from env.

``TG_TEST_BROKER`` is the broker (and, by default, the telemetry Redis); every other
setting comes the usual way (``TELEMETRY_GUARD_*`` variables). ``TG_TEST_QUEUE`` names
the default queue.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

from telemetry_guard import CircuitBreaker, GuardedTask, RetryPolicy, TelemetryGuard

BROKER = os.environ["TG_TEST_BROKER"]
#: Incremented by every run of ``cli.charge`` (never by its fallback).
RUNS_KEY = "cli-test:charge-runs"
FALLBACK = "fallback"

app = Celery("cli_breaker_app", broker=BROKER, backend=BROKER)
app.conf.update(
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_default_queue=os.environ.get("TG_TEST_QUEUE", "cli_breaker"),
)
guard = TelemetryGuard(app)

payments = CircuitBreaker("cli.payments", failure_threshold=3, reset_timeout=300.0)


def charge_fallback(order: str) -> str:
    """What ``cli.charge`` returns while its breaker is open."""
    return f"{FALLBACK}:{order}"


@app.task(bind=True, base=GuardedTask, name="cli.charge", breaker="cli.payments",
          fallback=charge_fallback, retry_policy=RetryPolicy(max_retries=0))
def charge(self: GuardedTask, order: str) -> str:
    """Counts its runs in Redis and succeeds."""
    redis.Redis.from_url(BROKER).incr(RUNS_KEY)
    return f"charged:{order}"
