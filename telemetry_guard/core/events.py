"""The facts every sink receives: plain frozen data, built once per failure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .classify import Severity

Decision = Literal["retry", "give_up"]


@dataclass(frozen=True)
class FailureEvent:
    """One failed attempt of a task, and what was decided about it.

    Every sink derives its own facts from it: a failure always; then either a
    scheduled retry (``decision == "retry"``) or a give-up.
    """

    task_name: str
    task_id: str | None
    attempt: int
    max_retries: int | None
    exception_type: str
    exception_module: str
    message: str
    traceback: str
    severity: Severity
    decision: Decision
    delay_s: float | None = None
    reason: str = ""
    expected: bool = False
    args: Any = None
    kwargs: Any = None
    queue: str | None = None
    hostname: str | None = None
    pid: int = 0
    trace_id: str | None = None
    span_id: str | None = None
    timestamp: float = 0.0
    #: Notification channels this failure is routed to (``sentry``, ``email``).
    channels: frozenset[str] = frozenset()
    exception: BaseException | None = field(default=None, compare=False, repr=False)
    #: The original message (task, id, args, kwargs, options), unredacted, for the
    #: dead-letter stream only; never logged or sent anywhere else.
    replay: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    # -- the workflow (Celery canvas) the task ran in, where Celery tells it ------------
    #: The id of the workflow's first task, and of the task that published this one.
    root_id: str | None = None
    parent_id: str | None = None
    #: The name of the workflow's first task.
    root_task: str | None = None
    group_id: str | None = None
    #: For a chord member: the id of the chord's callback.
    chord_id: str | None = None
    #: For a chord member: the name of the chord's callback task.
    chord_task: str | None = None
    #: 1-based position in a chain, and the chain's length.
    chain_position: int | None = None
    chain_length: int | None = None
    #: Steps a give-up abandons: the rest of the chain, link callbacks, the chord callback.
    steps_dropped: int = 0

    @property
    def retried(self) -> bool:
        """True when a retry was scheduled for this failure."""
        return self.decision == "retry"

    @property
    def fingerprint(self) -> tuple[str, str]:
        """What groups occurrences of the same problem: task and exception type."""
        return (self.task_name, self.exception_type)

    def as_record(self) -> dict[str, Any]:
        """The JSON-safe record stored in the error log (args already redacted)."""
        return {
            "task_name": self.task_name,
            "task_id": self.task_id,
            "attempt": self.attempt,
            "max_retries": self.max_retries,
            "severity": self.severity.label,
            "decision": self.decision,
            "delay_s": self.delay_s,
            "reason": self.reason,
            "expected": self.expected,
            "exception_type": self.exception_type,
            "exception_module": self.exception_module,
            "message": self.message,
            "traceback": self.traceback,
            "args": self.args,
            "kwargs": self.kwargs,
            "queue": self.queue,
            "hostname": self.hostname,
            "pid": self.pid,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "timestamp": self.timestamp,
            "channels": sorted(self.channels),
            "root_id": self.root_id,
            "parent_id": self.parent_id,
            "root_task": self.root_task,
            "group_id": self.group_id,
            "chord_id": self.chord_id,
            "chord_task": self.chord_task,
            "chain_position": self.chain_position,
            "chain_length": self.chain_length,
            "steps_dropped": self.steps_dropped,
        }


@dataclass(frozen=True)
class BreakerChange:
    """A circuit breaker moved from one state to another."""

    breaker: str
    from_state: str
    to_state: str
    timestamp: float = 0.0
    reason: str = ""
