"""Observability-first failure handling for Celery."""

from __future__ import annotations

from .breaker import CircuitBreaker
from .classify import Classifier, Severity, classify
from .events import BreakerChange, FailureEvent
from .exceptions import CircuitOpenError, TaskMemoryError, UnpicklableTaskError
from .guard import TelemetryGuard
from .http import register_resilient_request
from .policy import RetryPolicy
from .sinks.logging import configure_logging
from .task import GuardedTask

__all__ = [
    "BreakerChange",
    "CircuitBreaker",
    "CircuitOpenError",
    "Classifier",
    "FailureEvent",
    "GuardedTask",
    "RetryPolicy",
    "Severity",
    "TaskMemoryError",
    "TelemetryGuard",
    "UnpicklableTaskError",
    "classify",
    "configure_logging",
    "register_resilient_request",
]
