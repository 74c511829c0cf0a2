"""E-mail: enqueue ``telemetry_guard.notify`` for failures routed to the ``email`` channel.

The failing task only publishes a small JSON-safe payload through the app's producer
pool; throttling, SMTP and retries happen in the notification task, on a worker.

Message priority is chosen per broker transport (see :func:`notification_priority`):

- Redis (``redis``, ``rediss``, ``sentinel``): priority ``0``, which kombu's Redis
  transport serves first (lower is higher; messages go to one list per priority step).
  A worker that consumes several queues should list the notification queue first and
  set ``broker_transport_options={"queue_order_strategy": "priority"}``, or run a
  dedicated worker: ``celery -A proj worker -Q telemetry_guard.notifications``.
- RabbitMQ (``amqp``, ``amqps``, ``pyamqp``): priority ``9`` on a queue declared with
  ``x-max-priority`` (higher is higher). Declare it the same way on the worker side:
  ``task_queues=[notification_queue("telemetry_guard.notifications", broker_url), ...]``.
- Other transports: no priority (they ignore it); the separate queue still keeps
  notifications out of the backlog when a worker consumes it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from kombu.entity import Exchange, Queue

from ..core.brokers import AMQP_SCHEMES, REDIS_SCHEMES, broker_scheme
from ..core.channels import EMAIL
from ..core.events import FailureEvent
from ..core.sink import Sink
from ..stores.background import BackgroundWriter, ItemQueue

CHANNEL = EMAIL
#: Highest priority on kombu's Redis transport (lower numbers are served first).
REDIS_PRIORITY = 0
#: Priority of notifications on RabbitMQ (higher numbers are served first).
AMQP_PRIORITY = 9
#: ``x-max-priority`` of the notification queue on RabbitMQ.
AMQP_MAX_PRIORITY = 10
#: Publishing must not hold the failing task long: one quick retry on a stale connection.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.0, "interval_step": 0.2,
                        "interval_max": 0.2}


def notification_priority(broker_url: Any) -> int | None:
    """The highest message priority on this broker's transport; None when it has none."""
    scheme = broker_scheme(broker_url)
    if scheme in REDIS_SCHEMES:
        return REDIS_PRIORITY
    if scheme in AMQP_SCHEMES:
        return AMQP_PRIORITY
    return None


def notification_queue(name: str, broker_url: Any) -> Queue:
    """The notification queue as kombu declares it (``x-max-priority`` on RabbitMQ).

    Put it in ``app.conf.task_queues`` on RabbitMQ so that producer and worker declare
    the queue with the same arguments.
    """
    arguments = ({"x-max-priority": AMQP_MAX_PRIORITY}
                 if broker_scheme(broker_url) in AMQP_SCHEMES else None)
    exchange = Exchange(name, type="direct")  # type: ignore[no-untyped-call]
    return Queue(name, exchange, routing_key=name,  # type: ignore[no-untyped-call]
                 queue_arguments=arguments)


def build_payload(event: FailureEvent) -> dict[str, Any]:
    """The notification task's argument: small, JSON-safe, from already redacted fields."""
    timestamp = event.timestamp or time.time()
    return {
        "task_name": event.task_name,
        "task_id": event.task_id,
        "exception_type": event.exception_type,
        "message": event.message,
        "severity": event.severity.label,
        "time": dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(
            timespec="milliseconds"),
        "attempt": event.attempt,
        "hostname": event.hostname,
        "trace_id": event.trace_id,
        "traceback": event.traceback,
        "fingerprint": list(event.fingerprint),
        **workflow_payload(event),
    }


def workflow_payload(event: FailureEvent) -> dict[str, Any]:
    """The workflow fields the mail shows, those that are set (none outside a workflow)."""
    values = {"root_id": event.root_id, "root_task": event.root_task,
              "chain_position": event.chain_position, "chain_length": event.chain_length,
              "chord_id": event.chord_id, "steps_dropped": event.steps_dropped or None}
    return {key: value for key, value in values.items() if value is not None}


#: Notifications held in memory while the broker refuses them; more are counted and dropped.
MAX_PENDING = 1000
#: Seconds before held notifications are sent again; after a failure the wait doubles.
RESEND_FIRST_DELAY = 1.0
RESEND_MAX_DELAY = 30.0


class EmailSink(Sink):
    """Enqueues ``telemetry_guard.notify`` on the priority notification queue."""

    name = EMAIL

    def __init__(self, app: Any, *, queue: str, task_name: str, log: Any,
                 report_error: Callable[[str, BaseException | None], None]) -> None:
        """Sends ``app.tasks[task_name]`` to ``queue`` (at the broker's highest priority)."""
        self.app = app
        self.queue_name = queue
        self.task_name = task_name
        self.log = log
        self.report_error = report_error
        conf = app.conf
        self.broker_url = conf.broker_write_url or conf.broker_url
        self.priority = notification_priority(self.broker_url)
        self._queue: str | Queue | None = None
        #: Notifications the broker refused, sent again off the task's thread.
        self._held = BackgroundWriter(
            "telemetry_guard-email-resend", self._resend, lambda: ItemQueue(MAX_PENDING),
            linger=RESEND_FIRST_DELAY, backoff=RESEND_FIRST_DELAY, max_backoff=RESEND_MAX_DELAY,
            on_dropped=lambda: self.report_error("email_overflow", None))

    @property
    def task(self) -> Any:
        """``telemetry_guard.notify`` on the app (registered when the app finalizes)."""
        return self.app.tasks[self.task_name]

    def _destination(self) -> str | Queue:
        """The queue name, or on RabbitMQ a priority queue unless the app declares its own."""
        if self._queue is None:
            queue: str | Queue = self.queue_name
            if (broker_scheme(self.broker_url) in AMQP_SCHEMES
                    and self.queue_name not in self.app.amqp.queues):
                queue = notification_queue(self.queue_name, self.broker_url)
            self._queue = queue
        return self._queue

    def on_failure(self, event: FailureEvent) -> None:
        if CHANNEL not in event.channels:
            return
        payload = build_payload(event)
        try:
            self._publish(payload)
        except Exception:
            # The broker is down: keep the notification and send it when it is back.
            self._held.add(payload)
            raise

    def _publish(self, payload: dict[str, Any]) -> None:
        self.task.apply_async(
            args=(payload,), queue=self._destination(), priority=self.priority,
            retry=True, retry_policy=PUBLISH_RETRY_POLICY)

    def _resend(self, batch: list[dict[str, Any]]) -> None:
        """Publish held notifications oldest first; those left when the broker refuses stay."""
        while batch:
            self._publish(batch[0])
            del batch[0]
            self.log.info("notification.resent", channel=CHANNEL,
                                pending=len(batch) + self._held.buffered)

    def flush(self, timeout: float = 5.0) -> None:
        """Try once more to hand held notifications to the broker."""
        self._held.flush(timeout)
