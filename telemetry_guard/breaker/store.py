"""The interface both breaker stores offer: one process's memory, or Redis shared by a fleet."""

from __future__ import annotations

from typing import Protocol

from .state import Admission, BreakerSnapshot, Transition


class BreakerStore(Protocol):
    """Holds one breaker's state; every method is atomic against every other caller."""

    def admit(self) -> Admission:
        """Decide whether a call may run now."""
        ...

    def record(self, admission: Admission, outcome: str) -> tuple[Transition, ...]:
        """Count a call's outcome against its admission; return the transitions it caused."""
        ...

    def force_open(self) -> tuple[Transition, ...]:
        """Open the breaker now."""
        ...

    def reset(self) -> tuple[Transition, ...]:
        """Close the breaker and clear its counters."""
        ...

    def set_mode(self, mode: str) -> tuple[Transition, ...]:
        """Switch the breaker's mode."""
        ...

    def snapshot(self) -> BreakerSnapshot:
        """Read the breaker's current state."""
        ...

    def after_fork(self) -> None:
        """Drop per-process resources inherited from the parent (locks, connections, caches)."""
        ...
