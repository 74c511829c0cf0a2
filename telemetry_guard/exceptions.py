"""Exceptions raised by telemetry_guard.

    Exception
    ├── CircuitOpenError      a breaker refused the call
    ├── PeriodicRunMissed     a periodic task did not run within its interval × tolerance
    ├── BeatDown              celery beat stopped beating its heartbeat
    ├── TaskMemoryError       stands in for a MemoryError after which the pool child is recycled
    └── UnpicklableTaskError  stands in for a task's exception that cannot cross a process
"""

from __future__ import annotations


class CircuitOpenError(Exception):
    """An open circuit breaker refused the call; retry after ``retry_after`` seconds."""

    def __init__(self, breaker: str, retry_after: float) -> None:
        # args are the constructor's, so result backends can rebuild the exception
        super().__init__(breaker, retry_after)
        self.breaker = breaker
        self.retry_after = float(retry_after)

    def __str__(self) -> str:
        return f"circuit breaker {self.breaker!r} is open; retry after {self.retry_after:.1f}s"

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, float]]:
        return (type(self), (self.breaker, self.retry_after))


class UnpicklableTaskError(Exception):
    """A picklable stand-in for an exception that could not be pickled or printed.

    Keeps the original type's name, its message and its traceback text, so a
    retry or a result does not crash-loop the worker.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(type_name, message, traceback_text)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"

    def __reduce__(self) -> tuple[type[UnpicklableTaskError], tuple[str, str, str]]:
        return (type(self), (self.type_name, self.message, self.traceback_text))


class TaskMemoryError(Exception):
    """A task ran out of memory and its prefork child is being recycled.

    Stands in for the ``MemoryError`` itself, which Celery's main process would
    re-raise and stop on.
    """


class PeriodicRunMissed(Exception):
    """A periodic task did not run within its expected interval × tolerance."""

    def __init__(self, task: str, overdue_s: float, interval_s: float) -> None:
        super().__init__(task, overdue_s, interval_s)
        self.task = task
        self.overdue_s = float(overdue_s)
        self.interval_s = float(interval_s)

    def __str__(self) -> str:
        return (f"periodic task {self.task!r} did not run for {self.overdue_s:.1f}s "
                f"(expected every {self.interval_s:g}s)")

    def __reduce__(self) -> tuple[type[PeriodicRunMissed], tuple[str, float, float]]:
        return (type(self), (self.task, self.overdue_s, self.interval_s))


class BeatDown(Exception):
    """Celery beat sent no heartbeat for three heartbeat intervals."""

    def __init__(self, silent_s: float) -> None:
        super().__init__(silent_s)
        self.silent_s = float(silent_s)

    def __str__(self) -> str:
        return f"celery beat sent no heartbeat for {self.silent_s:.1f}s"

    def __reduce__(self) -> tuple[type[BeatDown], tuple[float]]:
        return (type(self), (self.silent_s,))
