"""The watcher: a daemon thread that tells missed runs and beat outages, once each.

It runs in beat and in each worker's main process; every few seconds it reads the shared
state and, by the contract's definitions, records a ``PeriodicRunMissed`` event once per
missed window and a ``BeatDown`` event once per outage (claims in Redis decide which process
tells it). While beat is down no run is told missed; after beat comes back, a task's window
(or its deadline) counts from beat's start, so runs beat could not send are not told missed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..core.events import FailureEvent
from .events import beat_down_event, missed_event
from .states import DEFAULT_TOLERANCE, baseline, beat_down, overdue
from .store import PeriodicStore, Snapshot

#: Longest pause between two checks, in seconds.
MAX_PERIOD = 5.0
#: Shortest pause between two checks, in seconds.
MIN_PERIOD = 0.2


class Watcher:
    """Checks the shared state every ``min(5, smallest interval)`` seconds."""

    def __init__(self, guard: Any, store: PeriodicStore,
                 report_error: Callable[[str, BaseException | None], None]) -> None:
        self.guard = guard
        self.store = store
        self._report_error = report_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.period = MAX_PERIOD

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="telemetry_guard-periodic-watch",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.check()
            except Exception as exc:  # Redis away: try again next period
                self._report_error("periodic", exc)

    def check(self, now: float | None = None) -> list[FailureEvent]:
        """Read the state once; record (and return) the events this process tells."""
        snapshot = self.store.snapshot(now)
        intervals = [t.interval for t in snapshot.tasks if t.interval]
        self.period = max(MIN_PERIOD, min([MAX_PERIOD, *intervals]))
        events = self._events(snapshot)
        for event in events:
            self.guard.record(event)
        return events

    def _events(self, snapshot: Snapshot) -> list[FailureEvent]:
        now, beat = snapshot.now, snapshot.beat
        if beat_down(beat, now):
            assert beat.heartbeat is not None
            if self.store.claim_beat_down(beat.heartbeat):
                return [beat_down_event(self.guard, now - beat.heartbeat, now)]
            return []
        events = []
        for task in snapshot.tasks:
            base = baseline(task)
            if base is None or not task.interval or not overdue(task, now):
                continue
            if task.missed_after is None and beat.started is not None \
                    and beat.started > base:  # (a deadline already counts from beat's start)
                window = task.interval * (task.tolerance or DEFAULT_TOLERANCE)
                if now - beat.started <= window:
                    continue  # beat is back: its first run of the task is still due
            if self.store.claim_missed(task.task, base):
                events.append(missed_event(self.guard, task.task, now - base, task.interval,
                                           now))
        return events
