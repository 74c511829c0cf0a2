"""Prometheus metrics: created once per process, label values bounded."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from ..core.events import BreakerChange, FailureEvent
from ..core.sink import Sink

OTHER = "other"
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, float("inf"))


class Metrics:
    """The telemetry_guard metric families (names are a contract: see docs/telemetry.md)."""

    def __init__(self, registry: Any = None) -> None:
        kw: dict[str, Any] = {"namespace": "telemetry_guard"}
        if registry is not None:
            kw["registry"] = registry
        self.task_failures = Counter(
            "task_failures", "Failed task attempts, retried or not.",
            ["task", "exception", "severity"], **kw)
        self.task_retries = Counter(
            "task_retries", "Retries scheduled.", ["task", "exception"], **kw)
        self.task_giveups = Counter(
            "task_giveups", "Tasks given up: retries exhausted or error not retryable.",
            ["task", "exception", "severity"], **kw)
        self.task_runtime = Histogram(
            "task_runtime_seconds", "Task run time by outcome.", ["task", "outcome"],
            buckets=RUNTIME_BUCKETS, **kw)
        self.breaker_transitions = Counter(
            "breaker_transitions", "Circuit breaker state transitions.",
            ["breaker", "from_state", "to_state"], **kw)
        self.breaker_calls = Counter(
            "breaker_calls", "Calls through a circuit breaker by outcome.",
            ["breaker", "outcome"], **kw)
        self.retry_budget_exhausted = Counter(
            "retry_budget_exhausted", "Retries refused by the fleet-wide retry budget.",
            ["task"], **kw)
        self.notifications = Counter(
            "notifications", "Notifications by channel, severity and outcome.",
            ["channel", "severity", "outcome"], **kw)
        self.telemetry_errors = Counter(
            "telemetry_errors", "Failures inside a telemetry sink (the task was not affected).",
            ["sink"], **kw)
        self.dead_letters_evicted = Counter(
            "dead_letters_evicted",
            "Dead letters removed by their task's retention before anyone replayed them.",
            ["task"], **kw)


_metrics: Metrics | None = None
_metrics_lock = threading.Lock()


def get_metrics() -> Metrics:
    """The process-wide metric families, created on first use."""
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


class LabelBound:
    """Admits at most ``limit`` distinct values; later newcomers become ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self.limit:
            return OTHER
        self._seen.add(value)
        return value


class MetricsSink(Sink):
    """Counts failures, retries and give-ups as three separate facts."""

    name = "metrics"

    def __init__(self, metrics: Metrics, *, max_label_values: int = 500) -> None:
        self.metrics = metrics
        self.task_label = LabelBound(max_label_values)
        self.exception_label = LabelBound(max_label_values)
        #: One bound for the ``breaker`` label of every breaker metric (per-host breakers).
        self.breaker_label = LabelBound(max_label_values)
        self._runtime: dict[tuple[str, str], Any] = {}

    def runtime(self, task_name: str, outcome: str) -> Any:
        """The runtime histogram child for a task and outcome, cached."""
        key = (task_name, outcome)
        child = self._runtime.get(key)
        if child is None:
            child = self.metrics.task_runtime.labels(self.task_label(task_name), outcome)
            self._runtime[key] = child
        return child

    def on_failure(self, event: FailureEvent) -> None:
        task = self.task_label(event.task_name)
        exception = self.exception_label(event.exception_type)
        severity = event.severity.label
        self.metrics.task_failures.labels(task, exception, severity).inc()
        if event.retried:
            self.metrics.task_retries.labels(task, exception).inc()
        else:
            self.metrics.task_giveups.labels(task, exception, severity).inc()
            if event.reason == "retry_budget_exhausted":
                self.metrics.retry_budget_exhausted.labels(task).inc()

    def dead_letters_evicted(self, task_name: str, count: int) -> None:
        """Count ``count`` dead letters of a task removed by its retention."""
        self.metrics.dead_letters_evicted.labels(self.task_label(task_name)).inc(count)

    def on_breaker_change(self, change: BreakerChange) -> None:
        self.metrics.breaker_transitions.labels(
            self.breaker_label(change.breaker), change.from_state, change.to_state).inc()

    def on_breaker_call(self, breaker: str, outcome: str) -> None:
        """Count one call through a breaker."""
        self.metrics.breaker_calls.labels(self.breaker_label(breaker), outcome).inc()


BREAKER_STATES = ("closed", "open", "half_open")


class BreakerStateCollector:
    """``telemetry_guard_breaker_state``, read from each breaker's shared state at scrape time.

    Every process that exposes metrics reads the same Redis state, so all scrapes agree. All
    breakers are read in one round trip per Redis (``breaker.states``). The ``breaker`` label
    goes through ``label`` (the guard's bound): breakers past the bound share the value
    ``other``, which is 1 on each state at least one of them is in. A breaker whose stored
    state is invalid is 0 in every state.
    """

    _installed: set[int] = set()
    #: The bound of the ``breaker`` label; the guard sets its own.
    label: LabelBound | None = None

    def collect(self) -> Any:
        from ..breaker import all_breakers, states

        family = GaugeMetricFamily(
            "telemetry_guard_breaker_state", "1 on the breaker's current state, 0 on the others.",
            labels=["breaker", "state"])
        label = type(self).label
        values: dict[str, dict[str, float]] = {}
        try:
            current = states(all_breakers())
        except Exception:
            current = {}
        for name, state in current.items():
            shown = label(name) if label is not None else name
            row = values.get(shown)
            if row is None:
                row = values[shown] = dict.fromkeys(BREAKER_STATES, 0.0)
            if state in row:
                row[state] = 1.0
        for shown, row in values.items():
            for name, value in row.items():
                family.add_metric([shown, name], value)
        yield family

    def describe(self) -> list[Any]:
        return []

    @classmethod
    def install(cls, registry: Any = None) -> None:
        """Register once into ``registry`` (default: the global one)."""
        registry = REGISTRY if registry is None else registry
        if id(registry) not in cls._installed:
            cls._installed.add(id(registry))
            registry.register(cls())
