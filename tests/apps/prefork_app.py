"""A Celery app for tests that run a real ``celery worker -P prefork`` subprocess."""

from __future__ import annotations

import os
import threading
import time

import redis
from celery import Celery

from telemetry_guard import GuardedTask, RetryPolicy, TelemetryGuard
from telemetry_guard.integration.callbacks import recycle_on_memory_error

BROKER = os.environ["TG_TEST_BROKER"]

app = Celery("prefork_app", broker=BROKER, backend=BROKER)
app.conf.update(
    worker_max_tasks_per_child=int(os.environ.get("TG_TEST_MAX_TASKS_PER_CHILD", "0")) or None,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_default_queue="prefork",
)
guard = TelemetryGuard(app)


@app.task(bind=True, base=GuardedTask, name="prefork.fail",
          retry_policy=RetryPolicy(max_retries=0))
def fail(self: GuardedTask, n: int) -> None:
    """Always fails with a non-retryable error."""
    raise ValueError(f"failure {n}")


@app.task(bind=True, base=GuardedTask, name="prefork.hang")
def hang(self: GuardedTask, key: str) -> None:
    """Publishes its pid, then sleeps long enough to be killed."""
    redis.Redis.from_url(BROKER).set(key, os.getpid())
    time.sleep(60)


@app.task(bind=True, base=GuardedTask, name="prefork.soft_limit", soft_time_limit=0.5,
          time_limit=10)
def soft_limit(self: GuardedTask) -> None:
    """Runs past its soft time limit."""
    time.sleep(5)


@app.task(bind=True, base=GuardedTask, name="prefork.hard_limit", time_limit=1)
def hard_limit(self: GuardedTask) -> None:
    """Runs past its hard time limit: the main process kills the child."""
    time.sleep(30)


class LockedConnectionError(ConnectionError):
    """A retryable error that cannot be pickled (it holds a lock)."""

    def __init__(self) -> None:
        super().__init__("connection pool locked")
        self.lock = threading.Lock()


@app.task(bind=True, base=GuardedTask, name="prefork.unpicklable",
          retry_policy=RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05))
def unpicklable(self: GuardedTask) -> str:
    """Fails twice with an unpicklable retryable error, then succeeds."""
    if self.request.retries < 2:
        raise LockedConnectionError()
    return "recovered"


guard.on_error(MemoryError, recycle_on_memory_error)


@app.task(bind=True, base=GuardedTask, name="prefork.out_of_memory")
def out_of_memory(self: GuardedTask) -> int:
    """Fails with MemoryError; the error callback recycles this child."""
    raise MemoryError("cannot allocate order batch")


@app.task(name="prefork.pid")
def pid() -> int:
    """The pid of the pool child that ran it."""
    return os.getpid()


@app.task(bind=True, base=GuardedTask, name="prefork.hang_once", acks_late=True,
          retry_on_worker_lost=True, default_retry_delay=0)
def hang_once(self: GuardedTask, key: str) -> str:
    """First run publishes its pid and hangs (to be killed); the retried run succeeds."""
    client = redis.Redis.from_url(BROKER)
    if client.incr(key + ":runs") == 1:
        client.set(key, os.getpid())
        time.sleep(60)
    return "ran again"


@app.task(bind=True, base=GuardedTask, name="prefork.hang_requeued", acks_late=True,
          reject_on_worker_lost=True)
def hang_requeued(self: GuardedTask, key: str) -> str:
    """First delivery publishes its pid and hangs (to be killed); the requeued one succeeds."""
    client = redis.Redis.from_url(BROKER)
    if client.incr(key + ":runs") == 1:
        client.set(key, os.getpid())
        time.sleep(60)
    return "ran again"
