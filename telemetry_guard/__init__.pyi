# The package's public names for type checkers; __init__.py imports each on first use.
from .breaker import CircuitBreaker as CircuitBreaker
from .core.classify import Classifier as Classifier
from .core.classify import Severity as Severity
from .core.classify import classify as classify
from .core.events import BreakerChange as BreakerChange
from .core.events import FailureEvent as FailureEvent
from .core.policy import RetryPolicy as RetryPolicy
from .exceptions import CircuitOpenError as CircuitOpenError
from .exceptions import PeriodicRunMissed as PeriodicRunMissed
from .exceptions import TaskMemoryError as TaskMemoryError
from .exceptions import UnpicklableTaskError as UnpicklableTaskError
from .http import register_resilient_request as register_resilient_request
from .integration.callbacks import recycle_on_memory_error as recycle_on_memory_error
from .integration.callbacks import reset_connection_pool as reset_connection_pool
from .integration.guard import TelemetryGuard as TelemetryGuard
from .integration.task import GuardedTask as GuardedTask
from .sinks.logging import configure_logging as configure_logging
from .sinks.span_redaction import RedactingSpanExporter as RedactingSpanExporter

__version__: str

__all__ = [
    "BreakerChange",
    "CircuitBreaker",
    "CircuitOpenError",
    "Classifier",
    "FailureEvent",
    "GuardedTask",
    "PeriodicRunMissed",
    "RedactingSpanExporter",
    "RetryPolicy",
    "Severity",
    "TaskMemoryError",
    "TelemetryGuard",
    "UnpicklableTaskError",
    "classify",
    "configure_logging",
    "recycle_on_memory_error",
    "register_resilient_request",
    "reset_connection_pool",
]
