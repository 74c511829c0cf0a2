"""The worker side: which tasks are periodic, and their runs' starts and ends.

Every task's ``task_prerun`` looks for beat's header on the request and asks one set lookup
(the task's name among the periodic names), its ``task_postrun`` one set lookup (the runs
started here); only a periodic task's run becomes a small record, written to Redis by a
background writer off the task's thread. The names are ``app.conf.beat_schedule``'s tasks
plus those beat registered in Redis, re-read in the background every ``REFRESH_INTERVAL`` s.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ..stores.background import BackgroundWriter, ItemQueue
from .store import PeriodicStore

#: The header beat's messages carry: when beat sent the task (``time.time()``).
SENT_HEADER = "telemetry_guard_periodic_sent"
#: Seconds between two readings of the registered names.
REFRESH_INTERVAL = 30.0
#: Run records buffered while Redis is slow or away.
BUFFER_SIZE = 10_000
WRITER_NAME = "telemetry_guard-periodic"
#: Runs remembered as started in one process (more means their ends never came).
OPEN_RUNS = 10_000
#: Celery's ``task_postrun`` states and what they mean for a run's end.
OUTCOMES = {"SUCCESS": "success", "FAILURE": "failure"}


class PeriodicRuns:
    """Records the runs of periodic tasks in the process where they run."""

    def __init__(self, store: PeriodicStore, static_names: frozenset[str],
                 report_error: Callable[[str, BaseException | None], None]) -> None:
        self.store = store
        self.static_names = static_names
        self.names: frozenset[str] = static_names
        self._report_error = report_error
        self.writer = BackgroundWriter(
            WRITER_NAME, store.write, lambda: ItemQueue(BUFFER_SIZE, 500), linger=0.05,
            backoff=0.5, max_backoff=5.0,
            on_error=lambda exc: report_error("periodic", exc),
            on_dropped=lambda: report_error("periodic_overflow", None), exit_flush=2.0)
        self._refresher: threading.Thread | None = None
        self._refresher_pid = 0
        self._stop = threading.Event()
        #: Ids of the runs started and not yet ended in this process.
        self._open: set[str] = set()

    # -- the task's thread --------------------------------------------------------------
    def started(self, task: Any, task_id: str | None) -> None:
        """``task_prerun``: a periodic task's run started. Never raises."""
        request = getattr(task, "request", None)
        sent = getattr(request, SENT_HEADER, None)
        if sent is None and task.name not in self.names:
            return
        try:
            now = time.time()
            delay = None
            if sent is not None and not getattr(request, "retries", 0):
                delay = now - float(sent)  # a retry's message still carries the first send
            self.writer.add(("start", task.name, task_id or "", now, delay))
            if len(self._open) >= OPEN_RUNS:  # postruns that never came: forget them
                self._open.clear()
            self._open.add(task_id or "")
        except Exception as exc:
            self._report_error("periodic", exc)

    def ended(self, task: Any, task_id: str | None, state: str | None) -> None:
        """``task_postrun``: the end of a run :meth:`started` recorded in this process
        (``state`` SUCCESS, FAILURE, RETRY). Never raises."""
        key = task_id or ""
        if key not in self._open:
            return
        self._open.discard(key)
        self._end(task, key, state)

    def lost(self, task: Any, task_id: str | None) -> None:
        """Worker main process: a run of a periodic task whose pool child was lost or
        killed (no ``task_postrun`` comes) ended as a failure. Never raises."""
        if task.name not in self.names and _sent_at(task) is None:
            return
        self._end(task, task_id or "", "FAILURE")

    def _end(self, task: Any, task_id: str, state: str | None) -> None:
        try:
            self.writer.add((OUTCOMES.get(state or "", "retry"), task.name, task_id,
                             time.time(), None))
        except Exception as exc:
            self._report_error("periodic", exc)

    # -- the names, refreshed in the background -----------------------------------------
    def start_refreshing(self) -> None:
        """Read the registered names now and every ``REFRESH_INTERVAL`` s (once per process)."""
        if self._refresher is not None and self._refresher_pid == os.getpid() \
                and self._refresher.is_alive():
            return
        self._stop = threading.Event()
        self._refresher_pid = os.getpid()
        self._refresher = threading.Thread(target=self._refresh_loop,
                                           name="telemetry_guard-periodic-names", daemon=True)
        self._refresher.start()

    def refresh(self) -> None:
        """Read the registered names once."""
        self.names = self.static_names | frozenset(self.store.task_names())

    def _refresh_loop(self) -> None:
        stop = self._stop
        while True:
            try:
                self.refresh()
            except Exception as exc:  # Redis away: keep the names known so far
                self._report_error("periodic", exc)
            if stop.wait(REFRESH_INTERVAL):
                return

    def close(self) -> None:
        """Stop refreshing; write what is buffered."""
        self._stop.set()
        self.writer.close(2.0)


def _sent_at(task: Any) -> Any:
    """Beat's send time, from the header of the message being run; None without it."""
    return getattr(getattr(task, "request", None), SENT_HEADER, None)
