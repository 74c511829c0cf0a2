"""GuardedTask: run → classify → decide retry → one FailureEvent for every sink."""

from __future__ import annotations

import os
import pickle
import socket
import time
import traceback as tb_module
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import Ignore, Reject, Retry

from .callbacks import outcome_for
from .classify import Severity, escalate
from .events import Decision, FailureEvent
from .exceptions import UnpicklableTaskError
from .policy import RetryPolicy
from .redact import exception_message
from .sinks.tracing import current_ids

if TYPE_CHECKING:
    from .guard import TelemetryGuard

#: Frames kept from the end of a traceback (a 10,000-frame recursion stays cheap).
TRACEBACK_FRAMES = 30
_PASS_THROUGH = (Retry, Ignore, Reject)
_HOSTNAME = socket.gethostname()


class GuardedTask(Task):  # type: ignore[misc]
    """Celery task base class that reports every failure and retries by policy.

    Task options (``@app.task(base=GuardedTask, ...)``): ``retry_policy``,
    ``severity`` (overrides the classifier), ``breaker``, ``fallback``, ``routes``.
    """

    retry_policy: RetryPolicy | None = None
    severity: Severity | str | None = None
    breaker: Any = None
    fallback: Callable[..., Any] | None = None
    routes: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:
            return super().__call__(*args, **kwargs)
        guard = _guard_of(self.app)
        span = guard.start_span(self, request)
        started = time.perf_counter()
        try:
            result = self.run(*args, **kwargs)
        except _PASS_THROUGH:
            guard.runtime(self.name, "retry").observe(time.perf_counter() - started)
            raise
        except Exception as exc:
            self._on_exception(guard, exc, args, kwargs, time.perf_counter() - started)
            raise  # not reached: _on_exception raises
        finally:
            if span is not None:
                span.end()
        guard.runtime(self.name, "success").observe(time.perf_counter() - started)
        return result

    def _on_exception(self, guard: TelemetryGuard, exc: Exception, args: Any, kwargs: Any,
                      elapsed: float) -> None:
        """Classify, decide, tell every sink once, then retry or re-raise."""
        request = self.request
        policy = guard.policy_for(self)
        retries = request.retries or 0
        delay: float | None = None
        if policy.allows_retry(exc, retries):
            decision: Decision = "retry"
            reason = ""
            delay = guard.cap_countdown(self.name, policy.delay(retries + 1))
        else:
            decision = "give_up"
            reason = "max_retries_exceeded" if policy.should_retry(exc) else "not_retryable"
        event = build_failure_event(
            guard, self, exc, args=args, kwargs=kwargs, request=request, decision=decision,
            delay=delay, reason=reason, max_retries=policy.max_retries)
        guard.record(event)
        if decision == "retry":
            guard.runtime(self.name, "retry").observe(elapsed)
            raise self.retry(exc=transportable(exc, event.traceback), countdown=delay,
                             max_retries=policy.max_retries)
        guard.runtime(self.name, "failure").observe(elapsed)
        replacement = outcome_for(exc)
        if replacement is not exc:
            raise replacement from None
        raise exc


def build_failure_event(
    guard: TelemetryGuard, task: Any, exc: BaseException, *, args: Any, kwargs: Any,
    request: Any, decision: Decision, delay: float | None = None, reason: str = "",
    max_retries: int | None = None, traceback_text: str | None = None,
) -> FailureEvent:
    """Build the one event every sink receives: redacted, bounded, with trace ids."""
    task_name = getattr(task, "name", None) or "unknown"
    severity = guard.severity_of(task, exc)
    if reason == "max_retries_exceeded":
        severity = escalate(severity, Severity.HIGH)
    throws = getattr(task, "throws", ()) or ()
    expected = bool(throws) and isinstance(exc, throws)
    redactor = guard.redactor
    trace_id, span_id = current_ids()
    delivery_info = getattr(request, "delivery_info", None) or {}
    retries = getattr(request, "retries", 0) or 0
    task_id = getattr(request, "id", None)
    replay = None
    if decision == "give_up" and guard.keeps_dead_letters:
        replay = {
            "task": task_name, "id": task_id, "args": list(args or ()),
            "kwargs": dict(kwargs or {}),
            "options": {"queue": delivery_info.get("routing_key"),
                        "exchange": delivery_info.get("exchange"),
                        "priority": delivery_info.get("priority")},
        }
    return FailureEvent(
        task_name=task_name,
        task_id=task_id,
        attempt=retries + 1,
        max_retries=max_retries,
        exception_type=type(exc).__name__,
        exception_module=type(exc).__module__,
        message=redactor.redact_text(exc),
        traceback=guard.traceback_redactor.redact_text(
            traceback_text if traceback_text is not None else format_traceback(exc)),
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
        channels=guard.router.channels_for(
            severity, expected=expected, task_routes=getattr(task, "routes", None)),
        exception=exc,
        replay=replay,
    )


def format_traceback(exc: BaseException) -> str:
    """The last frames of ``exc``'s traceback, with its causes; never raises."""
    try:
        te = tb_module.TracebackException.from_exception(
            exc, limit=-TRACEBACK_FRAMES, capture_locals=False)
        return "".join(te.format())
    except Exception:
        return f"{type(exc).__name__}: <traceback unavailable>"


def transportable(exc: BaseException, traceback_text: str) -> BaseException:
    """``exc`` when it survives pickling and printing, else a picklable stand-in."""
    try:
        repr(exc)
        str(exc)
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return UnpicklableTaskError(type(exc).__name__, exception_message(exc), traceback_text)


def _guard_of(app: Any) -> TelemetryGuard:
    guard = getattr(app, "_telemetry_guard", None)
    if guard is None:
        from .guard import TelemetryGuard

        guard = TelemetryGuard(app)
    return guard  # type: ignore[no-any-return]
