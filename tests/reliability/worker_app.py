"""The fault matrix's app for a real ``celery worker -P prefork`` subprocess.

The mixed workload of :mod:`tests.reliability.workload` under the prefix ``TG_REL_PREFIX``,
plus what only a prefork pool can show: a child killed mid-task (``acks_late`` and
``retry_on_worker_lost``: it runs again) and a task past its soft time limit. Settings come
from the environment (``TELEMETRY_GUARD_*``), as in production.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from telemetry_guard import GuardedTask, TelemetryGuard, configure_logging
from tests.reliability.workload import HARD_LIMIT, SOFT_LIMIT, Counters, register

BROKER = os.environ["TG_REL_BROKER"]
COUNTERS = os.environ["TG_REL_COUNTERS"]
PREFIX = os.environ["TG_REL_PREFIX"]

configure_logging()  # JSON lines on the worker's stdout, which the test reads
app = Celery("reliability_worker", broker=BROKER, backend=COUNTERS)
app.conf.update(
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={"queue_order_strategy": "priority"},
)
guard = TelemetryGuard(app)
tasks = register(app, PREFIX, COUNTERS)
counters = Counters(COUNTERS, PREFIX)


@app.task(bind=True, base=GuardedTask, name=f"{PREFIX}.killed_once", shared=False,
          acks_late=True, retry_on_worker_lost=True, default_retry_delay=0)
def killed_once(self: GuardedTask, key: str) -> str:
    """The first run publishes its pid and hangs until the test kills it; the next succeeds."""
    counters.attempt(key)
    if counters.attempts(key) == 1:
        counters.set(f"pid:{key}", os.getpid())
        time.sleep(60)
    return "ran again"


@app.task(bind=True, base=GuardedTask, name=f"{PREFIX}.soft_limit", shared=False,
          soft_time_limit=SOFT_LIMIT, time_limit=HARD_LIMIT)
def soft_limit(self: GuardedTask, key: str) -> None:
    """Notes when it started, then runs past its soft time limit."""
    counters.attempt(key)
    counters.set(f"started:{key}", repr(time.time()))
    time.sleep(HARD_LIMIT + 5)
