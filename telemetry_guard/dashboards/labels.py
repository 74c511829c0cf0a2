"""What the dashboards share about the metrics' labels: the task and breaker variables, their
selectors, and the colours of label values."""

from __future__ import annotations

from .grafana import Json, label_variable
from .periodic_promql import INTERVAL

#: Selectors of the series of the chosen tasks and breakers.
TASK = 'task=~"$task"'
BREAKER = 'breaker=~"$breaker"'

# Colours by label value, matched against the end of a series' display name.
SEVERITY_COLOURS = (("low", "blue"), ("medium", "yellow"), ("high", "orange"),
                    ("critical", "red"))
CALL_COLOURS = (("success", "green"), ("failure", "orange"), ("rejected", "red"))
NOTIFICATION_COLOURS = (("sent", "green"), ("throttled", "yellow"), ("failed", "red"))


def task_variable() -> Json:
    """Celery task names seen by the runtime histogram."""
    return label_variable("task", "Task", "telemetry_guard_task_runtime_seconds_count")


def breaker_variable() -> Json:
    """Circuit breaker names seen by the state gauge."""
    return label_variable("breaker", "Breaker", "telemetry_guard_breaker_state")


def periodic_task_variable() -> Json:
    """Periodic task names: the beat entries whose interval is exported."""
    return label_variable("task", "Periodic task", INTERVAL)
