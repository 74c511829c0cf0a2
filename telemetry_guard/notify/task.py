"""The plain Celery task ``telemetry_guard.notify`` that delivers notifications."""

from __future__ import annotations

from typing import Any

from celery import Task

from ..sinks.email import notification_priority
from .notifier import NOTIFY_TASK_NAME, Notifier


class NotifyTask(Task):  # type: ignore[misc]
    """The plain Celery task behind ``telemetry_guard.notify`` (never a GuardedTask)."""

    #: Set by :func:`register_notify_task`; the latest guard of the app wins.
    notifier: Notifier | None = None
    #: Its failures are the notifier's own (counted there), never notified again.
    telemetry_guard_observe = False
    #: ``apply_async`` options for sending it: the notification queue and priority.
    send_options: dict[str, Any] = {}


def _notify(self: NotifyTask, payload: dict[str, Any]) -> str:
    """Send one failure notification e-mail: throttled, retried, never notifying itself."""
    if self.notifier is None:
        raise RuntimeError("telemetry_guard.notify has no notifier: create a TelemetryGuard "
                           "with the 'email' setting in the worker")
    return self.notifier.deliver(self, payload)


def register_notify_task(app: Any, notifier: Notifier, *, queue: str) -> Any:
    """Register ``telemetry_guard.notify`` on ``app`` (once; a later guard's notifier rebinds it).

    Sent to ``queue`` at the broker's highest priority (``send_options``).
    """
    # No ``queue``/``priority`` task attributes (Celery 6 drops them): whoever sends the task
    # (the e-mail sink, a dead-letter replay) passes ``send_options`` to ``apply_async``.
    task = app.task(
        _notify, name=NOTIFY_TASK_NAME, base=NotifyTask, bind=True, shared=False, lazy=False,
        acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    if not isinstance(task, NotifyTask):
        raise RuntimeError(f"the app already has a task named {NOTIFY_TASK_NAME!r}")
    task.notifier = notifier
    task.send_options = send_options(app, queue)
    return task


def send_options(app: Any, queue: str) -> dict[str, Any]:
    """``apply_async`` options of a notification: its queue, the broker's top priority."""
    conf = app.conf
    return {"queue": queue,
            "priority": notification_priority(conf.broker_write_url or conf.broker_url)}
