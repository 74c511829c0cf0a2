"""The core scenarios with RabbitMQ as the broker (``TELEMETRY_GUARD_TEST_AMQP_URL``).

The broker is the RabbitMQ the variable names; results, the error log and dead letters use
the private redis-server. Every test declares its own queues and exchanges (unique names)
and deletes them afterwards; nothing else on the broker is touched. Scenarios:

- a retryable error twice, then success: two retries, no give-up, the result arrives;
- a give-up: the error-log record is redacted, the dead letter replays to this queue;
- the notification queue (declared as docs/integrations.md says: ``notification_queue(name,
  broker_url)`` in ``task_queues``) is a real AMQP priority queue (``x-max-priority`` 10,
  checked against the server) and the notification message carries priority 9; put back,
  it is then mailed by a worker.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from amqp.exceptions import PreconditionFailed
from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu import Connection, Exchange, Queue

from telemetry_guard import GuardedTask, RetryPolicy, TelemetryGuard
from telemetry_guard.sinks.email import AMQP_MAX_PRIORITY, AMQP_PRIORITY, notification_queue
from telemetry_guard.testing import capture_events
from tests.servers import wait_for
from tests.smtp_server import CapturingSMTPServer

AMQP_URL_ENV = "TELEMETRY_GUARD_TEST_AMQP_URL"
AMQP_URL = os.environ.get(AMQP_URL_ENV)

pytestmark = pytest.mark.skipif(
    not AMQP_URL, reason=f"RabbitMQ broker tests need {AMQP_URL_ENV} "
                         "(e.g. amqp://guest:guest@127.0.0.1:5672//)")

CANARY = "amqp-canary-pw-6d21"


class Names:
    """This test's queue and exchange names on the broker."""

    def __init__(self) -> None:
        run = uuid.uuid4().hex[:10]
        self.tasks = f"tg-test.{run}.tasks"
        self.notifications = f"tg-test.{run}.notifications"


@pytest.fixture
def names() -> Iterator[Names]:
    """Unique names; the queues and exchanges they name are deleted afterwards."""
    created = Names()
    yield created
    with Connection(AMQP_URL) as conn:
        for name in (created.tasks, created.notifications):
            channel = conn.channel()  # a failed delete closes the channel: one per call
            try:
                channel.queue_delete(name)
                channel.exchange_delete(name)
            except Exception:  # never declared by this test
                pass
            finally:
                try:
                    channel.close()
                except Exception:
                    pass


@pytest.fixture
def amqp_app(redis_url: str, names: Names) -> Iterator[Celery]:
    """A Celery app on RabbitMQ; results and telemetry in the private Redis."""
    app = Celery("tests-amqp", broker=AMQP_URL, backend=redis_url, set_as_current=False)
    app.conf.update(
        broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
        # The worker's event loop wakes for AMQP heartbeat checks only: with the default
        # (10 s) a test worker takes ~10 s to notice it should stop.
        broker_heartbeat=2,
        task_default_queue=names.tasks, result_expires=300,
        telemetry_guard_redis_url=redis_url,
        task_queues=[Queue(names.tasks, Exchange(names.tasks), routing_key=names.tasks),
                     notification_queue(names.notifications, AMQP_URL)],
        telemetry_guard_notification_queue=names.notifications)
    yield app
    guard = getattr(app, "_telemetry_guard", None)
    if guard is not None:
        guard.close()
    app.close()


def worker(app: Celery, *queues: str) -> Any:
    return start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING",
                        shutdown_timeout=10, queues=list(queues))


def test_retry_then_success_on_rabbitmq(amqp_app: Celery, names: Names,
                                        redis_url: str) -> None:
    """ConnectionError twice, then success: retry, retry, the result; two error-log records."""
    guard = TelemetryGuard(amqp_app)
    runs = {"n": 0}

    @amqp_app.task(bind=True, base=GuardedTask, name="amqp.flaky", shared=False,
                   retry_policy=RetryPolicy(max_retries=3, base_delay=0.05, max_delay=0.2,
                                            retry_on=(ConnectionError,)))
    def flaky(self: GuardedTask, order: int) -> str:
        runs["n"] += 1
        if runs["n"] <= 2:
            raise ConnectionError(f"upstream reset (order {order})")
        return f"charged {order}"

    with capture_events() as events, worker(amqp_app, names.tasks):
        assert flaky.delay(7).get(timeout=30) == "charged 7"
    assert [e.decision for e in events] == ["retry", "retry"]  # type: ignore[union-attr]
    assert runs["n"] == 3
    guard.flush()
    client = redis.Redis.from_url(redis_url)
    records = [json.loads(f[b"record"]) for _, f in client.xrange("telemetry_guard:errors")]
    assert [(r["decision"], r["attempt"], r["queue"]) for r in records] == [
        ("retry", 1, names.tasks), ("retry", 2, names.tasks)]
    assert client.xlen("telemetry_guard:dead") == 0


def test_give_up_on_rabbitmq_writes_a_redacted_record_and_a_replayable_dead_letter(
        amqp_app: Celery, names: Names, redis_url: str) -> None:
    """A non-retryable error: one give-up; record redacted; replay targets this queue."""
    guard = TelemetryGuard(amqp_app)

    @amqp_app.task(bind=True, base=GuardedTask, name="amqp.refund", shared=False,
                   retry_policy=RetryPolicy(max_retries=3))
    def refund(self: GuardedTask, order: int, password: str = "") -> None:
        raise ValueError(f"refund {order} rejected (password={password})")

    with worker(amqp_app, names.tasks):
        result = refund.apply_async(args=(9,), kwargs={"password": CANARY})
        with pytest.raises(ValueError):
            result.get(timeout=30)
    guard.flush()
    client = redis.Redis.from_url(redis_url)
    [(_, errors)] = client.xrange("telemetry_guard:errors")
    [(_, dead)] = client.xrange("telemetry_guard:dead")
    record = json.loads(errors[b"record"])
    assert record["task_id"] == result.id and record["decision"] == "give_up"
    assert record["reason"] == "not_retryable" and record["queue"] == names.tasks
    assert record["kwargs"] == {"password": "[REDACTED]"}
    assert record["message"].startswith("refund 9 rejected (password=[REDACTED]")
    assert CANARY.encode() not in errors[b"record"] and dead[b"record"] == errors[b"record"]
    replay = json.loads(dead[b"replay"])
    assert replay["task"] == "amqp.refund" and replay["id"] == result.id
    assert replay["args"] == [9] and replay["kwargs"] == {"password": CANARY}
    assert replay["options"]["queue"] == names.tasks


def declare(queue: str, arguments: dict[str, Any] | None) -> None:
    """Declare ``queue`` durable with ``arguments``; raises when the server's differ."""
    with Connection(AMQP_URL) as conn:
        channel = conn.channel()
        try:
            channel.queue_declare(queue, durable=True, auto_delete=False, arguments=arguments)
        finally:
            try:
                channel.close()
            except Exception:
                pass


def test_notification_queue_is_an_amqp_priority_queue_and_the_message_has_priority_9(
        amqp_app: Celery, names: Names) -> None:
    """x-max-priority 10 on the server; the notify message has priority 9; then it is mailed."""
    with CapturingSMTPServer() as smtp:
        guard = TelemetryGuard(amqp_app, email=smtp.settings())

        @amqp_app.task(bind=True, base=GuardedTask, name="amqp.ledger", severity="critical",
                       retry_policy=RetryPolicy(max_retries=0), shared=False)
        def ledger(self: GuardedTask) -> None:
            raise ValueError("ledger mismatch")

        with worker(amqp_app, names.tasks):  # notifications wait: nobody consumes them yet
            with pytest.raises(ValueError):
                ledger.delay().get(timeout=30)

        declare(names.notifications, {"x-max-priority": AMQP_MAX_PRIORITY})  # equivalent: ok
        with pytest.raises(PreconditionFailed):
            declare(names.notifications, None)  # a plain queue: the server's differs
        with Connection(AMQP_URL) as conn:
            queue = Queue(names.notifications, channel=conn.channel())
            message = wait_for(lambda: queue.get(no_ack=False), timeout=10)
            assert message.properties["priority"] == AMQP_PRIORITY == 9
            assert message.headers["task"] == "telemetry_guard.notify"
            assert message.delivery_info["routing_key"] == names.notifications
            message.requeue()

        with worker(amqp_app, names.notifications):
            [mail] = smtp.wait_for(1, timeout=30)
        guard.flush()
    assert mail.message["Subject"] == "[CRITICAL] amqp.ledger: ValueError"
