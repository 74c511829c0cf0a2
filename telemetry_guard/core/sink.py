"""The one interface every sink implements: typed no-op hooks."""

from __future__ import annotations

from .events import BreakerChange, FailureEvent


class Sink:
    """Receives failure events and breaker changes; subclasses override what they need.

    Hooks may raise: the dispatcher catches, counts and rate-limits the report,
    so a sink never has to protect itself.
    """

    #: The ``sink`` label of ``telemetry_guard_telemetry_errors_total``.
    name: str = "sink"

    def on_failure(self, event: FailureEvent) -> None:
        """Called once for every failed attempt."""

    def on_breaker_change(self, change: BreakerChange) -> None:
        """Called once, in the process that performed the transition."""

    def after_fork(self) -> None:
        """Called in a new prefork child before it runs tasks."""

    def flush(self, timeout: float = 5.0) -> None:
        """Deliver whatever is buffered, waiting at most ``timeout`` seconds."""

    def close(self) -> None:
        """Flush and release resources; the sink is not used afterwards."""
