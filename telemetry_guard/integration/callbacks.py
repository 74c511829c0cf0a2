"""Error callbacks: user code run in the worker after a failure is recorded.

``guard.on_error(ExcType, callback)`` registers ``callback(exc, event)``; for a
failure, the callbacks of the nearest class along the exception's MRO run,
each fail-open. Two ready-made callbacks ship here.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from celery.signals import task_postrun

from ..core.events import FailureEvent
from ..exceptions import TaskMemoryError

ErrorCallback = Callable[[BaseException, FailureEvent], Any]

#: Delay between the end of the task and the recycling signal: enough for the
#: pool child to hand its result to the parent.
RECYCLE_DELAY = 0.005


class ErrorCallbacks:
    """Callbacks by exception class, resolved along the exception's MRO."""

    def __init__(self) -> None:
        self._by_type: dict[type[BaseException], list[ErrorCallback]] = {}

    def register(self, exc_type: type[BaseException], callback: ErrorCallback) -> None:
        """Run ``callback(exc, event)`` for failures whose nearest registered class is this one."""
        if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
            raise TypeError(f"on_error() needs an exception class, got {exc_type!r}")
        if not callable(callback):
            raise TypeError(f"on_error() needs a callable, got {callback!r}")
        self._by_type.setdefault(exc_type, []).append(callback)

    def resolve(self, exc: BaseException) -> list[ErrorCallback]:
        """The callbacks of the nearest class in ``type(exc).__mro__`` that has any."""
        if not self._by_type:
            return []
        for cls in type(exc).__mro__:
            found = self._by_type.get(cls)
            if found:
                return list(found)
        return []

    def run(self, exc: BaseException, event: FailureEvent,
            report_error: Callable[[str, BaseException | None], None]) -> None:
        """Run the resolved callbacks; one that raises is counted and the rest still run."""
        for callback in self.resolve(exc):
            try:
                callback(exc, event)
            except Exception as error:
                report_error("error_callback", error)


def reset_connection_pool(reset: Callable[[], Any]) -> ErrorCallback:
    """A callback that calls ``reset()`` (e.g. ``engine.dispose``) on a database error.

    ``guard.on_error(sqlalchemy.exc.OperationalError, reset_connection_pool(engine.dispose))``
    """
    def reset_pool(exc: BaseException, event: FailureEvent) -> None:
        reset()

    return reset_pool


_in_pool_child = False


def mark_pool_child() -> None:
    """Called in a prefork child after fork: recycling applies here."""
    global _in_pool_child
    _in_pool_child = True


def recycle_on_memory_error(exc: BaseException, event: FailureEvent) -> None:
    """Collect garbage and have this prefork child exit after the current task.

    The pool replaces the child. Use with ``acks_late`` and
    ``reject_on_worker_lost`` so a task the child picked up meanwhile is redelivered.
    Outside a prefork child it only collects garbage.
    """
    gc.collect()
    if _in_pool_child:
        _recycling.add(id(exc))
        task_postrun.connect(_exit_after_task, weak=False, dispatch_uid=_RECYCLE_UID)


_recycling: set[int] = set()


def outcome_for(exc: BaseException) -> BaseException:
    """What the task raises after its callbacks: a stand-in when its child is being recycled."""
    if id(exc) in _recycling:
        _recycling.discard(id(exc))
        return TaskMemoryError(f"{type(exc).__name__}: {exc}; the pool child is recycled")
    return exc


_RECYCLE_UID = "telemetry_guard:recycle"


def _exit_after_task(**_: Any) -> None:
    """One-shot ``task_postrun`` receiver: the result is stored; leave once it is handed over."""
    task_postrun.disconnect(dispatch_uid=_RECYCLE_UID)
    timer = threading.Timer(RECYCLE_DELAY, os.kill, (os.getpid(), signal.SIGTERM))
    timer.daemon = True
    timer.start()
