"""The worker-side request of a GuardedTask: reports a lost child that Celery requeues.

With ``acks_late`` and ``reject_on_worker_lost``, Celery puts the message of a
child killed mid-task back on the queue and sends no signal about it; this
request class (Celery's documented extension point, ``Task.Request``) tells the
sinks once, from the worker's main process.
"""

from __future__ import annotations

from typing import Any

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery.worker.request import Request

from .task_guard import guard_of


class GuardedRequest(Request):  # type: ignore[misc]
    """A Celery request whose lost-worker requeues are reported like retries."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True,
                   return_ok: bool = False) -> Any:
        guard = guard_of(self.task.app)
        before = guard.times_recorded(self.id) if guard is not None else 0
        outcome = super().on_failure(exc_info, send_failed_event=send_failed_event,
                                     return_ok=return_ok)
        exc = getattr(exc_info, "exception", None)
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if (guard is not None and isinstance(exc, WorkerLostError)
                and self.task.acks_late and self.task.reject_on_worker_lost
                and guard.times_recorded(self.id) == before):
            guard.record_outside_task(
                self.task, exc, args=self.args, kwargs=self.kwargs, request=self._context,
                einfo=exc_info, decision="retry", reason="worker_lost")
        return outcome
