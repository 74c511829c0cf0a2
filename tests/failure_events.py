"""Failure events for tests of the metric sinks: the fields MetricsSink reads, the rest fixed."""

from __future__ import annotations

from telemetry_guard.core.classify import Severity
from telemetry_guard.core.events import FailureEvent


def event(decision: str, *, task_name: str = "t.charge", exception_type: str = "ConnectionError",
          severity: Severity = Severity.MEDIUM, reason: str = "") -> FailureEvent:
    """A failure event with the fields MetricsSink reads."""
    return FailureEvent(
        task_name=task_name, task_id="id-1", attempt=1, max_retries=3,
        exception_type=exception_type, exception_module="builtins", message="boom",
        traceback="", severity=severity, decision=decision,  # type: ignore[arg-type]
        reason=reason)
