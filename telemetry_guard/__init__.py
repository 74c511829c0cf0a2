"""Observability-first failure handling for Celery.

Public names are imported on first use (``__init__.pyi`` lists them for type checkers),
so that a part of the package, such as the ``telemetry-guard`` command, starts fast.
"""

from __future__ import annotations

import importlib as _importlib
from typing import Any as _Any

#: The public names, bound on first use, and the module that defines each.
_EXPORTS = {
    "BreakerChange": ".core.events", "CircuitBreaker": ".breaker",
    "CircuitOpenError": ".exceptions", "Classifier": ".core.classify",
    "FailureEvent": ".core.events", "GuardedTask": ".integration.task",
    "PeriodicRunMissed": ".exceptions",
    "RedactingSpanExporter": ".sinks.span_redaction", "RetryPolicy": ".core.policy",
    "Severity": ".core.classify", "TaskMemoryError": ".exceptions",
    "TelemetryGuard": ".integration.guard", "UnpicklableTaskError": ".exceptions",
    "classify": ".core.classify", "configure_logging": ".sinks.logging",
    "recycle_on_memory_error": ".integration.callbacks", "register_resilient_request": ".http",
    "reset_connection_pool": ".integration.callbacks",
}
BreakerChange: _Any
CircuitBreaker: _Any
CircuitOpenError: _Any
Classifier: _Any
FailureEvent: _Any
GuardedTask: _Any
PeriodicRunMissed: _Any
RedactingSpanExporter: _Any
RetryPolicy: _Any
Severity: _Any
TaskMemoryError: _Any
TelemetryGuard: _Any
UnpicklableTaskError: _Any
classify: _Any
configure_logging: _Any
recycle_on_memory_error: _Any
register_resilient_request: _Any
reset_connection_pool: _Any


def __getattr__(name: str) -> _Any:
    """A public name, imported on first use; ``__version__`` from the installed metadata."""
    if name == "__version__":
        from importlib import metadata
        try:
            value: _Any = metadata.version("telemetry-guard")  # pyproject.toml: the one source
        except metadata.PackageNotFoundError:  # imported from a source tree never installed
            value = "0+unknown"
    elif name in _EXPORTS:
        value = getattr(_importlib.import_module(_EXPORTS[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = [
    "BreakerChange", "CircuitBreaker", "CircuitOpenError", "Classifier", "FailureEvent",
    "GuardedTask", "PeriodicRunMissed", "RedactingSpanExporter", "RetryPolicy", "Severity",
    "TaskMemoryError", "TelemetryGuard", "UnpicklableTaskError", "classify", "configure_logging",
    "recycle_on_memory_error", "register_resilient_request", "reset_connection_pool",
]
