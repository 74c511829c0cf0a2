"""The beat side: register the schedule, beat a heartbeat, stamp what beat sends.

On ``beat_init`` (and ``beat_embedded_init`` for ``worker -B``) beat's entries are
registered in Redis; a daemon thread beats the heartbeat every ``beat_heartbeat_interval``
seconds, registers the entries again when the schedule changed and stores each task's
deadline (``missed_after``, from its schedule and last run); each message beat's own
thread publishes carries ``telemetry_guard_periodic_sent``; ``/metrics`` is served on
``beat_metrics_port`` when set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ..sinks import exposition
from .deadline import deadlines
from .runs import SENT_HEADER
from .schedule import PeriodicEntry, from_config, from_scheduler
from .store import PeriodicStore

#: Threads that run a beat loop in this process (``worker -B`` may run it in a thread).
_beat_threads: set[int] = set()


def stamp_beat_publish(sender: Any = None, headers: Any = None, **_: Any) -> None:
    """``before_task_publish``: a message beat's thread sends carries the send time."""
    if headers is not None and threading.get_ident() in _beat_threads:
        try:
            headers[SENT_HEADER] = time.time()
        except Exception:
            pass


class BeatSide:
    """What periodic monitoring does in the beat process."""

    def __init__(self, app: Any, store: PeriodicStore, *, heartbeat_interval: float,
                 tolerance: float, metrics_port: int | None, metrics_address: str,
                 report_error: Callable[[str, BaseException | None], None],
                 on_started: Callable[[], None], log: Any) -> None:
        self.app = app
        self.store = store
        self.heartbeat_interval = heartbeat_interval
        self.tolerance = tolerance
        self.metrics_port = metrics_port
        self.metrics_address = metrics_address
        self._report_error = report_error
        self._on_started = on_started
        self._log = log
        self._service: Any = None
        self._beat_thread: int | None = None
        self._registered: list[PeriodicEntry] | None = None
        #: The entries as last read (with their schedule objects).
        self._current: list[PeriodicEntry] = []
        self._started: float | None = None
        #: Beat's start until a heartbeat recorded it.
        self._start_unrecorded: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.metrics_server: Any = None

    def on_beat_init(self, sender: Any = None, **_: Any) -> None:
        """Beat starts (in this thread): register, beat, stamp, serve metrics, watch."""
        if getattr(sender, "app", None) is not self.app or self._service is not None:
            return
        self._service = sender
        self._beat_thread = threading.get_ident()
        _beat_threads.add(self._beat_thread)
        self._started = self._start_unrecorded = time.time()
        self._beat_once()  # Redis away: the heartbeat thread tries again
        self._thread = threading.Thread(target=self._beat_loop, name="telemetry_guard-beat",
                                        daemon=True)
        self._thread.start()
        self._serve_metrics()
        self._on_started()

    def _entries(self) -> list[PeriodicEntry] | None:
        """The scheduler's entries; ``beat_schedule``'s when it exposes none at first;
        None (keep those registered) when it cannot be read later."""
        scheduler = getattr(self._service, "scheduler", None)
        entries = (from_scheduler(scheduler, self.app, self.tolerance)
                   if scheduler is not None else None)
        if entries is None and self._registered is None:
            return from_config(self.app, self.tolerance)
        return entries

    def _register(self) -> None:
        """Register the entries when they differ from those registered last."""
        entries = self._entries()
        if entries is not None:
            self._current = entries
        if entries is not None and entries != self._registered:
            self.store.register(entries)
            self._registered = entries
            self._log.info("periodic.registered", tasks=[e.task for e in entries])

    def _store_deadlines(self) -> None:
        """Each task's deadline from its schedule and its last run (else monitored since;
        beat's start when later)."""
        entries = self._current
        if not entries:
            return
        baselines = self.store.baselines([entry.task for entry in entries])
        self.store.set_deadlines(deadlines(entries, baselines, self._started))

    def _beat_once(self) -> None:
        """Register, store the deadlines, then beat (with beat's start until it is
        recorded); reports a failure, never raises."""
        try:
            self._register()
            self._store_deadlines()  # before the heartbeat says beat is back
        except Exception as exc:
            self._report_error("periodic", exc)
        try:
            self.store.beat(self.heartbeat_interval, started=self._start_unrecorded)
            self._start_unrecorded = None
        except Exception as exc:
            self._report_error("periodic", exc)

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            self._beat_once()

    def _serve_metrics(self) -> None:
        if self.metrics_port is None or self.metrics_server is not None:
            return
        try:
            self.metrics_server = exposition.serve_metrics(self.metrics_port,
                                                           self.metrics_address)
            self._log.info("metrics.serving", port=self.metrics_server.server_port)
        except Exception as exc:
            self._report_error("metrics_server", exc)

    def close(self) -> None:
        """Stop beating, stamping and serving."""
        self._stop.set()
        _beat_threads.discard(self._beat_thread)  # type: ignore[arg-type]
        server, self.metrics_server = self.metrics_server, None
        if server is not None:
            server.shutdown()
            server.server_close()
