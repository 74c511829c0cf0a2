"""A breaker store in this process's memory: the state machine under a lock."""

from __future__ import annotations

import threading
from time import monotonic

from .state import Admission, BreakerConfig, BreakerMachine, BreakerSnapshot, Transition


class MemoryBreakerStore:
    """One process's breaker state; threads share it, other processes do not."""

    def __init__(self, name: str, config: BreakerConfig) -> None:
        self.name = name
        self.machine = BreakerMachine(config)
        self._lock = threading.Lock()

    def admit(self) -> Admission:
        """Decide whether a call may run now (closed: no lock, no clock)."""
        machine = self.machine
        fast = machine.fast_admission
        if fast is not None:
            return fast
        with self._lock:
            return machine.admit(monotonic())

    def record(self, admission: Admission, outcome: str) -> tuple[Transition, ...]:
        """Count a call's outcome; return the transitions it caused."""
        if not admission.record:
            return ()
        with self._lock:
            return self.machine.record(monotonic(), outcome, admission.generation,
                                       admission.permit)

    def force_open(self) -> tuple[Transition, ...]:
        """Open now."""
        with self._lock:
            return self.machine.force_open(monotonic())

    def reset(self) -> tuple[Transition, ...]:
        """Close and clear the counters."""
        with self._lock:
            return self.machine.reset(monotonic())

    def set_mode(self, mode: str) -> tuple[Transition, ...]:
        """Switch mode."""
        with self._lock:
            return self.machine.set_mode(mode, monotonic())

    def snapshot(self) -> BreakerSnapshot:
        """The current state."""
        with self._lock:
            return self.machine.snapshot(self.name, monotonic())

    def after_fork(self) -> None:
        """Replace the lock, which another thread of the parent may have held at fork."""
        self._lock = threading.Lock()
