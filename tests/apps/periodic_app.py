"""A Celery app with a one-second beat schedule, for tests that run real beat and worker
subprocesses (``TG_TEST_SCHEDULER=redbeat`` also configures RedBeat on the same Redis)."""

from __future__ import annotations

import os
import time

from celery import Celery

from telemetry_guard import TelemetryGuard

BROKER = os.environ["TG_TEST_BROKER"]

app = Celery("periodic_app", broker=BROKER, backend=BROKER)
app.conf.update(
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_default_queue="periodic",
    beat_schedule={
        "tick every second": {"task": "periodic.tick", "schedule": 1.0},
        "slow every second": {"task": "periodic.slow", "schedule": 1.0},
    },
    redbeat_redis_url=BROKER,
    redbeat_key_prefix="tg-test-redbeat",
    telemetry_guard_beat_heartbeat_interval=0.5,
    telemetry_guard_periodic_tolerance=2.0,
    telemetry_guard_error_log_flush_interval=0.05,
)
guard = TelemetryGuard(app)


@app.task(name="periodic.tick")
def tick() -> str:
    """Done at once."""
    return "tick"


@app.task(name="periodic.slow", periodic_tolerance=3.0)
def slow() -> None:
    """Runs past its one-second interval, so the next run starts while it is still going."""
    time.sleep(1.6)


@app.task(name="periodic.plain")
def plain() -> str:
    """Not in any schedule."""
    return "plain"
