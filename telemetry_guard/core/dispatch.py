"""Fans one event out to every sink: the single place where telemetry fails open."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from .events import BreakerChange, FailureEvent
from .sink import Sink

#: At most one log line per sink per this many seconds about its failures.
ERROR_LOG_INTERVAL = 60.0

Listener = Callable[[FailureEvent | BreakerChange], None]

#: Process-wide listeners (``telemetry_guard.testing.capture_events``).
listeners: list[Listener] = []


class Dispatcher:
    """Hands each event to each sink; a sink that raises is counted and skipped."""

    def __init__(self, sinks: Iterable[Sink], *, telemetry_errors: Any = None) -> None:
        self.sinks: tuple[Sink, ...] = tuple(sinks)
        self._telemetry_errors = telemetry_errors
        self._last_logged: dict[str, float] = {}
        self._lock = threading.Lock()
        self._log = structlog.get_logger("telemetry_guard")

    def failure(self, event: FailureEvent) -> None:
        """Deliver a failure event to every sink and listener."""
        for sink in self.sinks:
            try:
                sink.on_failure(event)
            except Exception as exc:
                self.report_error(sink.name, exc)
        self._notify_listeners(event)

    def failure_to(self, event: FailureEvent, names: Iterable[str]) -> None:
        """Deliver a failure event only to the sinks named."""
        wanted = set(names)
        for sink in self.sinks:
            if sink.name in wanted:
                try:
                    sink.on_failure(event)
                except Exception as exc:
                    self.report_error(sink.name, exc)

    def breaker_change(self, change: BreakerChange) -> None:
        """Deliver a breaker transition to every sink and listener."""
        for sink in self.sinks:
            try:
                sink.on_breaker_change(change)
            except Exception as exc:
                self.report_error(sink.name, exc)
        self._notify_listeners(change)

    def after_fork(self) -> None:
        """Let every sink re-create its per-process state."""
        self._each("after_fork")

    def flush(self, timeout: float = 5.0) -> None:
        """Flush every sink."""
        self._each("flush", timeout)

    def close(self) -> None:
        """Close every sink."""
        self._each("close")

    def report_error(self, sink: str, exc: BaseException | None) -> None:
        """Count a sink failure; log it at most once per minute per sink. Never raises."""
        try:
            if self._telemetry_errors is not None:
                self._telemetry_errors.labels(sink).inc()
        except Exception:  # the metrics themselves may be what is broken: still log it
            pass
        try:
            now = time.monotonic()
            with self._lock:
                last = self._last_logged.get(sink)
                if last is not None and now - last < ERROR_LOG_INTERVAL:
                    return
                self._last_logged[sink] = now
            self._log.warning("telemetry.sink_failed", sink=sink,
                              error=type(exc).__name__ if exc is not None else None)
        except Exception:  # the logging sink itself may be what is broken
            pass

    def _each(self, hook: str, *args: Any) -> None:
        for sink in self.sinks:
            try:
                getattr(sink, hook)(*args)
            except Exception as exc:
                self.report_error(sink.name, exc)

    @staticmethod
    def _notify_listeners(item: FailureEvent | BreakerChange) -> None:
        for listener in tuple(listeners):
            try:
                listener(item)
            except Exception:
                pass
