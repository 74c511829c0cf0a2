"""The failure pipeline, free of Celery and of the guard: decide, then build one event.

An exception and its task context go through :func:`decide` (retry or give up, and why)
and :class:`EventBuilder` (classify, route, redact, bound) into the one
:class:`~telemetry_guard.core.events.FailureEvent` the dispatcher hands to every sink. The
Celery integration (``GuardedTask``, the signal receivers) calls these two and nothing else
of the pipeline. Tasks and requests are read by attribute (``name``, ``severity``,
``throws``, ``routes``; ``id``, ``retries``, ``delivery_info``, ``hostname``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from .classify import Classifier, Severity, escalate
from .events import BreakerChange, Decision, FailureEvent
from .policy import RetryPolicy
from .redact import Redactor
from .routing import Router
from .tracebacks import format_traceback

_HOSTNAME = socket.gethostname()

#: Give-up reasons that make a failure at least HIGH.
ESCALATING_REASONS = frozenset({
    "max_retries_exceeded", "breaker_open_too_long", "retry_budget_exhausted"})


class RetryDecision(NamedTuple):
    """What to do with a failed attempt: ``retry`` (after ``delay`` s) or ``give_up``."""

    decision: Decision
    reason: str = ""
    delay: float | None = None


def decide(policy: RetryPolicy, exc: BaseException, retries: int, *,
           retries_used_up: bool = False,
           budget_allows: Callable[[], bool] | None = None) -> RetryDecision:
    """Retry or give up, by the policy and the retry budget.

    ``retries_used_up``: the task itself asked for a retry past its limit.
    ``budget_allows`` is asked only when the policy allows a retry (it may withdraw).
    """
    if retries_used_up:
        return RetryDecision("give_up", "max_retries_exceeded")
    if policy.allows_retry(exc, retries):
        if budget_allows is None or budget_allows():
            return RetryDecision("retry", "", honour_retry_after(
                policy.delay(retries + 1), exc, policy))
        return RetryDecision("give_up", "retry_budget_exhausted")
    return RetryDecision(
        "give_up", "max_retries_exceeded" if policy.should_retry(exc) else "not_retryable")


def honour_retry_after(delay: float, exc: BaseException, policy: RetryPolicy) -> float:
    """At least the ``retry_after`` seconds an exception asks for (e.g. HTTP 429), capped."""
    asked = getattr(exc, "retry_after", None)
    if isinstance(asked, (int, float)) and asked > delay:
        return min(float(asked), policy.max_delay)
    return delay


#: Reads a task's workflow context from its request: ``(request, task_name=..., give_up=...,
#: falls_back=...)`` → ``FailureEvent`` fields (``root_id``, ``chain_position``, ...).
WorkflowReader = Callable[..., Mapping[str, Any]]


class Routing(NamedTuple):
    """A failure's severity, whether its task expects it (``throws``), and its channels."""

    severity: Severity
    expected: bool
    channels: frozenset[str]


class EventBuilder:
    """Classify, route, redact and bound: one :class:`FailureEvent` per failed attempt."""

    def __init__(self, *, classifier: Classifier, router: Router, redactor: Redactor,
                 traceback_redactor: Redactor, keeps_dead_letters: bool,
                 trace_ids: Callable[[], tuple[str | None, str | None]],
                 workflow: WorkflowReader | None = None) -> None:
        self.classifier = classifier
        self.router = router
        self.redactor = redactor
        self.traceback_redactor = traceback_redactor
        self.keeps_dead_letters = keeps_dead_letters
        self.trace_ids = trace_ids
        self.workflow = workflow

    def severity_of(self, task: Any, exc: BaseException) -> Severity:
        """Task option ``severity`` when set, else the classifier's verdict."""
        override = getattr(task, "severity", None)
        if override is not None:
            return Severity.parse(override)
        return self.classifier.classify(exc)

    def routing(self, task: Any, exc: BaseException, reason: str) -> Routing:
        """Severity (raised to HIGH by an escalating give-up), expected, channels."""
        severity = self.severity_of(task, exc)
        if reason in ESCALATING_REASONS:
            severity = escalate(severity, Severity.HIGH)
        throws = getattr(task, "throws", ()) or ()
        expected = bool(throws) and isinstance(exc, throws)
        channels = self.router.channels_for(
            severity, expected=expected, task_routes=getattr(task, "routes", None))
        return Routing(severity, expected, channels)

    def build(self, task: Any, exc: BaseException, *, args: Any, kwargs: Any, request: Any,
              decision: Decision, delay: float | None = None, reason: str = "",
              max_retries: int | None = None,
              traceback_text: str | None = None, falls_back: bool = False) -> FailureEvent:
        """The one event every sink receives: redacted, bounded, with trace ids and the
        workflow context (``falls_back``: a give-up whose fallback's result flows on)."""
        task_name = getattr(task, "name", None) or "unknown"
        severity, expected, channels = self.routing(task, exc, reason)
        redactor = self.redactor
        trace_id, span_id = self.trace_ids()
        delivery_info = getattr(request, "delivery_info", None) or {}
        task_id = getattr(request, "id", None)
        replay = None
        if decision == "give_up" and self.keeps_dead_letters:
            replay = {
                "task": task_name, "id": task_id, "args": list(args or ()),
                "kwargs": dict(kwargs or {}),
                "options": {"queue": delivery_info.get("routing_key"),
                            "exchange": delivery_info.get("exchange"),
                            "priority": delivery_info.get("priority")},
            }
        workflow = (self.workflow(request, task_name=task_name, give_up=decision == "give_up",
                                  falls_back=falls_back) if self.workflow is not None else {})
        return FailureEvent(
            task_name=task_name,
            task_id=task_id,
            attempt=(getattr(request, "retries", 0) or 0) + 1,
            max_retries=max_retries,
            exception_type=type(exc).__name__,
            exception_module=type(exc).__module__,
            message=redactor.redact_text(exc),
            traceback=(self.traceback_redactor.redact_tail(traceback_text)
                       if traceback_text is not None
                       else self.traceback_redactor.truncate_head(
                           format_traceback(exc, redactor.redact_text))),
            severity=severity,
            decision=decision,
            delay_s=delay,
            reason=reason,
            expected=expected,
            args=redactor.redact(args),
            kwargs=redactor.redact(kwargs),
            queue=delivery_info.get("routing_key"),
            hostname=getattr(request, "hostname", None) or _HOSTNAME,
            pid=os.getpid(),
            trace_id=trace_id,
            span_id=span_id,
            timestamp=time.time(),
            channels=channels,
            exception=exc,
            replay=replay,
            **workflow,
        )

    def breaker_trip(self, change: BreakerChange) -> FailureEvent:
        """A breaker opening, as a HIGH failure for routing to Sentry and e-mail."""
        severity = Severity.HIGH
        return FailureEvent(
            task_name=f"breaker:{change.breaker}", task_id=None, attempt=1, max_retries=None,
            exception_type="CircuitOpenError", exception_module="telemetry_guard.exceptions",
            message=f"circuit breaker {change.breaker!r} opened ({change.reason or 'tripped'})",
            traceback="", severity=severity, decision="give_up", reason="breaker_opened",
            timestamp=change.timestamp, channels=self.router.channels_for(severity))
