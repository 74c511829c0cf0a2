"""The failure events of periodic monitoring: a missed run, a beat outage."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from ..core.classify import Severity
from ..core.events import FailureEvent
from ..exceptions import BeatDown, PeriodicRunMissed

BEAT_TASK_NAME = "celery.beat"
_HOSTNAME = socket.gethostname()


class _TaskStandIn:
    """A task this process does not register: only its name decides its routing."""

    def __init__(self, name: str) -> None:
        self.name = name


def missed_event(guard: Any, task_name: str, overdue_s: float, interval_s: float,
                 now: float | None = None) -> FailureEvent:
    """``PeriodicRunMissed`` of ``task_name``: severity and channels by the task's rules."""
    exc = PeriodicRunMissed(task_name, overdue_s, interval_s)
    try:
        task = guard.app.tasks.get(task_name)
    except Exception:  # the app cannot be finalized: route by the task's name alone
        task = None
    severity, expected, channels = guard.events.routing(
        task if task is not None else _TaskStandIn(task_name), exc, "periodic_missed")
    return _event(task_name, exc, severity, channels, "periodic_missed", now)


def beat_down_event(guard: Any, silent_s: float, now: float | None = None) -> FailureEvent:
    """``BeatDown``: HIGH, routed as a HIGH failure is."""
    severity = Severity.HIGH
    return _event(BEAT_TASK_NAME, BeatDown(silent_s), severity,
                  guard.router.channels_for(severity), "beat_down", now)


def _event(task_name: str, exc: BaseException, severity: Severity, channels: frozenset[str],
           reason: str, now: float | None) -> FailureEvent:
    return FailureEvent(
        task_name=task_name, task_id=None, attempt=1, max_retries=None,
        exception_type=type(exc).__name__, exception_module=type(exc).__module__,
        message=str(exc), traceback="", severity=severity, decision="give_up",
        reason=reason, hostname=_HOSTNAME, pid=os.getpid(),
        timestamp=time.time() if now is None else now, channels=channels, exception=exc)
