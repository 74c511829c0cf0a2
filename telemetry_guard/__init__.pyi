# The package's public names for type checkers; __init__.py imports each on first use.
from .breaker import CircuitBreaker as CircuitBreaker
from .classify import Classifier as Classifier
from .classify import Severity as Severity
from .classify import classify as classify
from .events import BreakerChange as BreakerChange
from .events import FailureEvent as FailureEvent
from .exceptions import CircuitOpenError as CircuitOpenError
from .exceptions import TaskMemoryError as TaskMemoryError
from .exceptions import UnpicklableTaskError as UnpicklableTaskError
from .guard import TelemetryGuard as TelemetryGuard
from .http import register_resilient_request as register_resilient_request
from .policy import RetryPolicy as RetryPolicy
from .sinks.logging import configure_logging as configure_logging
from .span_redaction import RedactingSpanExporter as RedactingSpanExporter
from .task import GuardedTask as GuardedTask

__version__: str

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
