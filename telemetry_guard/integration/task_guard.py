"""What the Celery integration asks of the guard, as protocols (no import of the guard).

``TelemetryGuard`` satisfies both; the task class and the signal receivers are typed
against these, so imports run one way: guard → signals → task → pipeline.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..core.events import FailureEvent
from ..core.pipeline import EventBuilder
from ..core.policy import RetryPolicy

#: The attribute of a Celery app holding its guard (set and removed by TelemetryGuard only).
APP_ATTRIBUTE = "_telemetry_guard"


def guard_of(app: Any) -> SignalGuard | None:
    """The guard of a Celery app, or None when ``TelemetryGuard(app)`` was never made."""
    return getattr(app, APP_ATTRIBUTE, None)


class TaskGuard(Protocol):
    """What ``GuardedTask`` uses while one of its runs fails, retries or waits."""

    app: Any
    log: Any
    settings: Any
    retry_budget: Any
    events: EventBuilder

    def policy_for(self, task: Any) -> RetryPolicy: ...
    def cap_countdown(self, task_name: str, delay: float) -> float: ...
    def record(self, event: FailureEvent) -> None: ...
    def runtime(self, task_name: str, outcome: str) -> Any: ...
    def start_span(self, task: Any, request: Any) -> Any: ...
    def mark_attempt_handled(self, request: Any) -> None: ...
    def record_celery_retry(self, task: Any, retry: BaseException, *, request: Any, args: Any,
                            kwargs: Any, einfo: Any = None) -> None: ...


class SignalGuard(TaskGuard, Protocol):
    """What the signal receivers use besides: readiness, the dispatcher, error reports."""

    dispatcher: Any
    redactor: Any

    @property
    def ready(self) -> bool: ...
    def setup(self) -> None: ...
    def report_error(self, sink: str, exc: BaseException | None) -> None: ...
    def attempt_recorded(self, task_id: str | None, attempt: int) -> bool: ...
    def times_recorded(self, task_id: str | None) -> int: ...
    def record_outside_task(self, task: Any, exc: BaseException, *, args: Any, kwargs: Any,
                            request: Any, einfo: Any, decision: Any, reason: str,
                            delay: float | None = None,
                            max_retries: int | None = None) -> None: ...
