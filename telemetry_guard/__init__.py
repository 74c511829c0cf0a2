"""Observability-first failure handling for Celery."""

from __future__ import annotations

from importlib import metadata as _metadata

from .breaker import CircuitBreaker
from .classify import Classifier, Severity, classify
from .events import BreakerChange, FailureEvent
from .exceptions import CircuitOpenError, TaskMemoryError, UnpicklableTaskError
from .guard import TelemetryGuard
from .http import register_resilient_request
from .policy import RetryPolicy
from .sinks.logging import configure_logging
from .span_redaction import RedactingSpanExporter
from .task import GuardedTask

try:
    __version__ = _metadata.version("telemetry-guard")  # pyproject.toml is the one source
except _metadata.PackageNotFoundError:  # imported from a source tree never installed
    __version__ = "0+unknown"

__all__ = [
    "BreakerChange",
    "CircuitBreaker",
    "CircuitOpenError",
    "Classifier",
    "FailureEvent",
    "GuardedTask",
    "RedactingSpanExporter",
    "RetryPolicy",
    "Severity",
    "TaskMemoryError",
    "TelemetryGuard",
    "UnpicklableTaskError",
    "classify",
    "configure_logging",
    "register_resilient_request",
]
