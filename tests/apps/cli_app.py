"""A Celery app for the CLI tests: ``celery -A tests.apps.cli_app worker`` and ``guard``.

Configured from the environment: ``TG_TEST_BROKER`` (the private Redis; broker, error
log and dead letters all live there) and, optionally, ``TG_TEST_QUEUE`` (default ``cli``).
Its tasks fail on purpose, with known severities:

- ``cli.charge(order, kind)``: ``kind="declined"`` raises ``CardDeclined`` (classified LOW),
  ``kind="ledger"`` raises ``LedgerCorrupt`` (classified HIGH); never retried.
- ``cli.report(n)``: task option ``severity=HIGH``, raises ``ValueError``.
- ``cli.cleanup(n)``: task option ``severity=LOW``, raises ``ValueError``.
- ``cli.archive(n)``: raises ``ValueError``; ``task_routes`` sends it to ``cli-archive``
  (no worker consumes that queue), so a replay's queue can be seen on the broker.
- ``cli.sync(account, password=...)``: fails while the Redis key ``cli:sync:broken`` is set,
  so the test can flip it and replay; on success it appends JSON ``{"account": ...,
  "replay_of": <header telemetry_guard_replay_of>}`` to the list ``cli:sync:done``.
"""

from __future__ import annotations

import json
import os

import redis
from celery import Celery

from telemetry_guard import GuardedTask, RetryPolicy, Severity, TelemetryGuard

BROKER = os.environ.get("TG_TEST_BROKER", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("TG_TEST_QUEUE", "cli")
#: While this key exists, ``cli.sync`` fails.
BROKEN_KEY = "cli:sync:broken"
#: ``cli.sync`` appends each account it synced here (JSON, with the replay header).
DONE_KEY = "cli:sync:done"
NO_RETRY = RetryPolicy(max_retries=0)

app = Celery("cli_app", broker=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    telemetry_guard_error_log_flush_interval=0.05,
    task_routes={"cli.archive": {"queue": "cli-archive"}},
)
guard = TelemetryGuard(app, tracing=False)


class CardDeclined(Exception):
    """A customer's card was declined: expected, low severity."""


class LedgerCorrupt(Exception):
    """The ledger does not balance: high severity."""


guard.classifier.register(CardDeclined, Severity.LOW)
guard.classifier.register(LedgerCorrupt, Severity.HIGH)


@app.task(bind=True, base=GuardedTask, name="cli.charge", retry_policy=NO_RETRY)
def charge(self: GuardedTask, order: int, kind: str) -> None:
    """Fails LOW (``declined``) or HIGH (``ledger``)."""
    if kind == "ledger":
        raise LedgerCorrupt(f"ledger off by 0.01 for order {order}")
    raise CardDeclined(f"card declined for order {order}")


@app.task(bind=True, base=GuardedTask, name="cli.report", retry_policy=NO_RETRY,
          severity=Severity.HIGH)
def report(self: GuardedTask, n: int) -> None:
    """Always fails; HIGH through the task option."""
    raise ValueError(f"report {n} has no data")


@app.task(bind=True, base=GuardedTask, name="cli.cleanup", retry_policy=NO_RETRY,
          severity=Severity.LOW)
def cleanup(self: GuardedTask, n: int) -> None:
    """Always fails; LOW through the task option."""
    raise ValueError(f"cleanup {n} found a locked file")


@app.task(bind=True, base=GuardedTask, name="cli.archive", retry_policy=NO_RETRY)
def archive(self: GuardedTask, n: int) -> None:
    """Always fails; routed to ``cli-archive`` by the app's ``task_routes``."""
    raise ValueError(f"archive {n} is read-only")


@app.task(bind=True, base=GuardedTask, name="cli.sync", retry_policy=NO_RETRY)
def sync(self: GuardedTask, account: str, password: str = "") -> str:
    """Fails while ``cli:sync:broken`` is set; records the account once it succeeds."""
    client = redis.Redis.from_url(BROKER)
    if client.exists(BROKEN_KEY):
        raise ConnectionRefusedError(f"sync of {account} refused by the upstream")
    replay_of = getattr(self.request, "telemetry_guard_replay_of", None)
    client.rpush(DONE_KEY, json.dumps({"account": account, "replay_of": replay_of}))
    return account
