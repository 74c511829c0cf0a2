"""The periodic metric families, read from the shared Redis state at scrape time.

Every process that serves ``/metrics`` (worker main processes, beat with
``beat_metrics_port``) reads the same state, so every scrape agrees. With OTLP metrics
(``telemetry_guard_metrics = "otlp"|"both"``) the same values are observable gauges read at
export time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, NamedTuple

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .store import PeriodicStore, Snapshot, TaskRecord

PREFIX = "telemetry_guard_periodic_"


class Family(NamedTuple):
    """One metric family: name, help, whether a counter, and how a task record gives it."""

    name: str
    documentation: str
    counter: bool
    attribute: str


#: The per-task families of the contract (``task`` label), each from a record attribute.
TASK_FAMILIES = (
    Family(PREFIX + "last_run_timestamp_seconds", "Last start of a run.", False, "last_run"),
    Family(PREFIX + "last_success_timestamp_seconds", "Last successful end of a run.", False,
           "last_success"),
    Family(PREFIX + "last_failure_timestamp_seconds", "Last failed end of a run (a give-up).",
           False, "last_failure"),
    Family(PREFIX + "expected_interval_seconds", "The schedule's interval.", False, "interval"),
    Family(PREFIX + "tolerance_ratio", "Missed after interval x tolerance without a run.",
           False, "tolerance"),
    Family(PREFIX + "missed_after_timestamp_seconds",
           "When the task is missed without a run: the first due time after its last run "
           "plus (tolerance - 1) x that slot's gap.", False, "missed_after"),
    Family(PREFIX + "monitored_since_timestamp_seconds",
           "When monitoring first saw the entry.", False, "monitored_since"),
    Family(PREFIX + "last_start_delay_seconds",
           "Last run's start minus the time beat sent it.", False, "last_start_delay"),
    Family(PREFIX + "running", "Runs in progress now.", False, "running"),
    Family(PREFIX + "overlaps", "Runs that started while another run was still going.",
           True, "overlaps"),
)
HEARTBEAT = "telemetry_guard_beat_heartbeat_timestamp_seconds"
HEARTBEAT_INTERVAL = "telemetry_guard_beat_heartbeat_interval_seconds"


def task_values(task: TaskRecord, family: Family) -> float | None:
    """The value of ``family`` for ``task``; None when absent (never ran, ...)."""
    value = getattr(task, family.attribute)
    return None if value is None else float(value)


class PeriodicCollector:
    """The contract's periodic families, read from Redis at each scrape (one snapshot)."""

    #: The store of this process's guard; None: nothing to export.
    store: PeriodicStore | None = None
    _installed: set[int] = set()
    _lock = threading.Lock()

    def collect(self) -> Any:
        snapshot = read_snapshot()
        if snapshot is None:
            return
        for family in TASK_FAMILIES:
            cls = CounterMetricFamily if family.counter else GaugeMetricFamily
            metric = cls(family.name, family.documentation, labels=["task"])
            for task in snapshot.tasks:
                value = task_values(task, family)
                if value is not None:
                    metric.add_metric([task.task], value)
            yield metric
        beat = snapshot.beat
        if beat.heartbeat is not None:
            yield GaugeMetricFamily(HEARTBEAT, "Beat's last heartbeat.", value=beat.heartbeat)
        if beat.interval is not None:
            yield GaugeMetricFamily(HEARTBEAT_INTERVAL, "How often beat beats.",
                                    value=beat.interval)

    def describe(self) -> list[Any]:
        return []

    @classmethod
    def install(cls, registry: Any = None) -> None:
        """Register once into ``registry`` (default: the global one)."""
        registry = REGISTRY if registry is None else registry
        with cls._lock:
            if id(registry) in cls._installed:
                return
            cls._installed.add(id(registry))
        registry.register(cls())


def read_snapshot() -> Snapshot | None:
    """The shared state now; None when off or unreadable (the scrape goes on without it)."""
    store = PeriodicCollector.store
    if store is None:
        return None
    try:
        return store.snapshot()
    except Exception:
        return None


_otel_installed: set[int] = set()


def install_otel_gauges(meter_provider: Any = None) -> None:
    """The same families as OpenTelemetry observable instruments, read at export time (once
    per process and provider; default: the global MeterProvider)."""
    if id(meter_provider) in _otel_installed:
        return
    _otel_installed.add(id(meter_provider))
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Observation

    meter = (metrics.get_meter("telemetry_guard") if meter_provider is None
             else meter_provider.get_meter("telemetry_guard"))

    def observe(family: Family) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            snapshot = read_snapshot()
            for task in snapshot.tasks if snapshot is not None else ():
                value = task_values(task, family)
                if value is not None:
                    yield Observation(value, {"task": task.task})
        return callback

    def observe_beat(attribute: str) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            snapshot = read_snapshot()
            value = getattr(snapshot.beat, attribute) if snapshot is not None else None
            if value is not None:
                yield Observation(value)
        return callback

    for family in TASK_FAMILIES:
        if family.counter:  # a monotonic sum named without _total, as the other counters
            meter.create_observable_counter(family.name, callbacks=[observe(family)])
        else:
            meter.create_observable_gauge(family.name, callbacks=[observe(family)])
    meter.create_observable_gauge(HEARTBEAT, callbacks=[observe_beat("heartbeat")])
    meter.create_observable_gauge(HEARTBEAT_INTERVAL, callbacks=[observe_beat("interval")])
