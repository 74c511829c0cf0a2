"""Observability-first failure handling for Celery.

Public names are imported on first use (``__init__.pyi`` lists them for type checkers),
so that a part of the package, such as the ``telemetry-guard`` command, starts fast.
"""

from __future__ import annotations

import importlib as _importlib
from typing import Any as _Any

# Bound now: the function ``classify`` must shadow the submodule of the same name.
from .classify import Classifier, Severity, classify

#: The other public names, bound on first use, and the module that defines each.
_EXPORTS = {
    "BreakerChange": ".events", "CircuitBreaker": ".breaker",
    "CircuitOpenError": ".exceptions", "FailureEvent": ".events", "GuardedTask": ".task",
    "RedactingSpanExporter": ".span_redaction", "RetryPolicy": ".policy",
    "TaskMemoryError": ".exceptions", "TelemetryGuard": ".guard",
    "UnpicklableTaskError": ".exceptions", "configure_logging": ".sinks.logging",
    "register_resilient_request": ".http",
}
BreakerChange: _Any
CircuitBreaker: _Any
CircuitOpenError: _Any
FailureEvent: _Any
GuardedTask: _Any
RedactingSpanExporter: _Any
RetryPolicy: _Any
TaskMemoryError: _Any
TelemetryGuard: _Any
UnpicklableTaskError: _Any
configure_logging: _Any
register_resilient_request: _Any


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
    "GuardedTask", "RedactingSpanExporter", "RetryPolicy", "Severity", "TaskMemoryError",
    "TelemetryGuard", "UnpicklableTaskError", "classify", "configure_logging",
    "register_resilient_request",
]
