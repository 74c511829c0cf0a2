"""``PeriodicMonitor``: periodic monitoring of one guard, wired to Celery's signals.

The guard builds one when ``periodic_monitoring`` is on and it has a Redis. The monitor
connects beat's start (``beat_init``, ``beat_embedded_init``), the worker's readiness and
shutdown and each pool child's start; the run hooks of every task are the guard's signal
receivers, which hand periodic runs to :class:`PeriodicRuns`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import signals
from celery.exceptions import TimeLimitExceeded

from ..sinks import exposition
from .beat import BeatSide, stamp_beat_publish
from .collector import PeriodicCollector, install_otel_gauges
from .runs import PeriodicRuns
from .store import PeriodicStore
from .watcher import Watcher

_said_off = False
#: Failures told by the worker's main process for a run no ``task_postrun`` ends.
LOST_RUN_ERRORS = (WorkerLostError, TimeLimitExceeded)


def static_task_names(app: Any) -> frozenset[str]:
    """The tasks of ``app.conf.beat_schedule`` (no schedule is read here)."""
    try:
        schedule = app.conf.beat_schedule or {}
        return frozenset(spec["task"] for spec in schedule.values()
                         if isinstance(spec, Mapping) and isinstance(spec.get("task"), str))
    except Exception:
        return frozenset()


class PeriodicMonitor:
    """Beat side, worker side, watcher and metrics of one guard."""

    @classmethod
    def build(cls, guard: Any) -> PeriodicMonitor | None:
        """The guard's monitor; None when off (without Redis: said once in the log when the
        app has a beat schedule)."""
        global _said_off
        settings = guard.settings
        if not settings.periodic_monitoring:
            return None
        if not settings.redis_url:
            if not _said_off and static_task_names(guard.app):
                _said_off = True
                guard.log.info("periodic.monitoring_off", why="no telemetry_guard Redis")
            return None
        return cls(guard)

    def __init__(self, guard: Any) -> None:
        settings = guard.settings
        self.guard = guard
        self._uid = f"telemetry_guard:periodic:{id(guard)}"
        self.store = PeriodicStore(settings.redis_url, settings.key_prefix)
        self.runs = PeriodicRuns(self.store, static_task_names(guard.app), guard.report_error)
        self.watcher = Watcher(guard, self.store, guard.report_error)
        self.beat = BeatSide(
            guard.app, self.store, heartbeat_interval=settings.beat_heartbeat_interval,
            tolerance=settings.periodic_tolerance, metrics_port=settings.beat_metrics_port,
            metrics_address=settings.metrics_address, report_error=guard.report_error,
            on_started=self.watcher.start, log=guard.log)
        PeriodicCollector.store = self.store
        PeriodicCollector.install()
        if PeriodicCollector.install not in exposition.SCRAPE_COLLECTORS:
            exposition.SCRAPE_COLLECTORS.append(PeriodicCollector.install)
        if settings.metrics in ("otlp", "both"):
            try:
                install_otel_gauges()
            except Exception as exc:
                guard.report_error("metrics", exc)
        guard.signals.periodic = self.runs
        for signal, handler in self._pairs():
            signal.connect(handler, weak=True, dispatch_uid=self._uid)
        signals.before_task_publish.connect(
            stamp_beat_publish, weak=False, dispatch_uid="telemetry_guard:periodic_publish")

    def _pairs(self) -> list[tuple[Any, Any]]:
        return [
            (signals.beat_init, self.beat.on_beat_init),
            (signals.beat_embedded_init, self.beat.on_beat_init),
            (signals.worker_ready, self.on_worker_ready),
            (signals.worker_process_init, self.on_worker_process_init),
            (signals.worker_process_shutdown, self.on_worker_process_shutdown),
            (signals.worker_shutdown, self.on_worker_shutdown),
            (signals.task_failure, self.on_task_failure),
        ]

    def on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        """Worker main process: read the periodic names, start watching."""
        if getattr(sender, "app", None) is self.guard.app:
            self.runs.start_refreshing()
            self.watcher.start()

    def on_worker_process_init(self, **_: Any) -> None:
        """Pool child: its own names refresher (the parent's thread is not here)."""
        self.runs.start_refreshing()

    def on_task_failure(self, sender: Any = None, task_id: str | None = None,
                        exception: BaseException | None = None, **_: Any) -> None:
        """Worker main process: a run whose child was lost or killed (no ``task_postrun``
        comes) ends as a failure, so it is not left running."""
        if isinstance(exception, LOST_RUN_ERRORS) and sender is not None:
            self.runs.lost(sender, task_id)

    def on_worker_process_shutdown(self, **_: Any) -> None:
        """Pool child exiting: write the buffered runs (its exit skips ``atexit``)."""
        self.runs.writer.flush(2.0)

    def on_worker_shutdown(self, **_: Any) -> None:
        """Worker main process exiting: stop watching, write the buffered runs."""
        self.watcher.stop()
        self.runs.close()

    def close(self) -> None:
        """Disconnect, stop the threads, write what is buffered."""
        for signal, handler in self._pairs():
            signal.disconnect(handler, dispatch_uid=self._uid)
        if getattr(self.guard.signals, "periodic", None) is self.runs:
            self.guard.signals.periodic = None
        if PeriodicCollector.store is self.store:
            PeriodicCollector.store = None
        self.watcher.stop()
        self.beat.close()
        self.runs.close()
