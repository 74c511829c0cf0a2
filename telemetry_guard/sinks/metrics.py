"""The metric families (Prometheus, OpenTelemetry or both), made once per process."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Counter, Histogram

from ..core.events import BreakerChange, FailureEvent
from ..core.sink import Sink
from .breaker_states import LabelBound
from .otel_metrics import (
    FanOutFamily,
    flush_meter_provider,
    otel_families,
    provider_inherited_from_parent,
)

RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, float("inf"))


#: ``telemetry_guard_metrics``: where the metric families are written.
BACKENDS = ("prometheus", "otlp", "both")


@dataclass(frozen=True)
class FamilySpec:
    """One metric family: the ``Metrics`` attribute, the name without namespace (and without
    the ``_total`` prometheus_client adds to counters), the type, help text and labels."""

    attribute: str
    name: str
    kind: str
    documentation: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


FAMILIES = (
    FamilySpec("task_failures", "task_failures", "counter",
               "Failed task attempts, retried or not.", ("task", "exception", "severity")),
    FamilySpec("task_retries", "task_retries", "counter", "Retries scheduled.",
               ("task", "exception")),
    FamilySpec("task_giveups", "task_giveups", "counter",
               "Tasks given up: retries exhausted or error not retryable.",
               ("task", "exception", "severity")),
    FamilySpec("task_runtime", "task_runtime_seconds", "histogram", "Task run time by outcome.",
               ("task", "outcome"), RUNTIME_BUCKETS),
    FamilySpec("breaker_transitions", "breaker_transitions", "counter",
               "Circuit breaker state transitions.", ("breaker", "from_state", "to_state")),
    FamilySpec("breaker_calls", "breaker_calls", "counter",
               "Calls through a circuit breaker by outcome.", ("breaker", "outcome")),
    FamilySpec("retry_budget_exhausted", "retry_budget_exhausted", "counter",
               "Retries refused by the fleet-wide retry budget.", ("task",)),
    FamilySpec("notifications", "notifications", "counter",
               "Notifications by channel, severity and outcome.",
               ("channel", "severity", "outcome")),
    FamilySpec("telemetry_errors", "telemetry_errors", "counter",
               "Failures inside a telemetry sink (the task was not affected).", ("sink",)),
    FamilySpec("dead_letters_evicted", "dead_letters_evicted", "counter",
               "Dead letters removed by their task's retention before anyone replayed them.",
               ("task",)),
    FamilySpec("workflows_broken", "workflows_broken", "counter",
               "Workflows (a chain or chord) abandoned by a give-up, by their first task.",
               ("root_task",)),
)


def check_backend(backend: str) -> str:
    """The backend name, or a ValueError naming the valid ones."""
    if backend not in BACKENDS:
        raise ValueError(f"metrics backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    return backend


def prometheus_families(registry: Any = None) -> dict[str, Any]:
    """The prometheus_client families, registered into ``registry`` (default: the global one)."""
    kw: dict[str, Any] = {"namespace": "telemetry_guard"}
    if registry is not None:
        kw["registry"] = registry
    families: dict[str, Any] = {}
    for spec in FAMILIES:
        if spec.kind == "histogram":
            families[spec.attribute] = Histogram(spec.name, spec.documentation,
                                                 list(spec.labels), buckets=spec.buckets, **kw)
        else:
            families[spec.attribute] = Counter(spec.name, spec.documentation,
                                               list(spec.labels), **kw)
    return families


class Metrics:
    """The telemetry_guard metric families (names are a contract: see docs/telemetry.md).

    ``backend`` picks where they are written: ``prometheus`` (prometheus_client families),
    ``otlp`` (the OpenTelemetry metrics API, same names and labels: ``otel_metrics``) or
    ``both``. Every family attribute has the same ``.labels(...).inc(n)`` /
    ``.observe(v)`` surface whichever the backend. ``registry`` and ``meter_provider`` default
    to the global ones, whose families are made once per process.
    """

    task_failures: Any
    task_retries: Any
    task_giveups: Any
    task_runtime: Any
    breaker_transitions: Any
    breaker_calls: Any
    retry_budget_exhausted: Any
    notifications: Any
    telemetry_errors: Any
    dead_letters_evicted: Any
    workflows_broken: Any

    def __init__(self, registry: Any = None, *, backend: str = "prometheus",
                 meter_provider: Any = None) -> None:
        self.backend = check_backend(backend)
        prometheus = otel = None
        if backend != "otlp":
            prometheus = (_global_families("prometheus") if registry is None
                          else prometheus_families(registry))
        if backend != "prometheus":
            otel = (_global_families("otlp") if meter_provider is None
                    else otel_families(FAMILIES, meter_provider))
        for spec in FAMILIES:
            if prometheus is not None and otel is not None:
                family: Any = FanOutFamily(prometheus[spec.attribute], otel[spec.attribute])
            elif otel is not None:
                family = otel[spec.attribute]
            else:
                family = prometheus[spec.attribute]  # type: ignore[index]
            setattr(self, spec.attribute, family)

    @property
    def exports_otlp(self) -> bool:
        """Whether the families write to the OpenTelemetry metrics API."""
        return self.backend != "prometheus"


_global: dict[str, dict[str, Any]] = {}
_metrics: dict[str, Metrics] = {}
_metrics_lock = threading.RLock()


def _global_families(kind: str) -> dict[str, Any]:
    """The families of the global registry or MeterProvider, made once per process."""
    with _metrics_lock:
        families = _global.get(kind)
        if families is None:
            families = (prometheus_families() if kind == "prometheus"
                        else otel_families(FAMILIES))
            _global[kind] = families
        return families


def get_metrics(backend: str = "prometheus") -> Metrics:
    """The process-wide metric families for ``backend``, created on first use."""
    metrics = _metrics.get(backend)
    if metrics is None:
        with _metrics_lock:
            metrics = _metrics.get(backend)
            if metrics is None:
                metrics = _metrics[backend] = Metrics(backend=check_backend(backend))
    return metrics


class MetricsSink(Sink):
    """Counts failures, retries and give-ups as three separate facts."""

    name = "metrics"

    def __init__(self, metrics: Metrics, *, max_label_values: int = 500) -> None:
        self.metrics = metrics
        self.task_label = LabelBound(max_label_values)
        self.exception_label = LabelBound(max_label_values)
        #: One bound for the ``breaker`` label of every breaker metric (per-host breakers).
        self.breaker_label = LabelBound(max_label_values)
        self.root_task_label = LabelBound(max_label_values)
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
            if event.steps_dropped > 0:
                self.metrics.workflows_broken.labels(
                    self.root_task_label(event.root_task or event.task_name)).inc()

    def dead_letters_evicted(self, task_name: str, count: int) -> None:
        """Count ``count`` dead letters of a task removed by its retention."""
        self.metrics.dead_letters_evicted.labels(self.task_label(task_name)).inc(count)

    def on_breaker_change(self, change: BreakerChange) -> None:
        self.metrics.breaker_transitions.labels(
            self.breaker_label(change.breaker), change.from_state, change.to_state).inc()

    def on_breaker_call(self, breaker: str, outcome: str) -> None:
        """Count one call through a breaker."""
        self.metrics.breaker_calls.labels(self.breaker_label(breaker), outcome).inc()

    def after_fork(self) -> None:
        """A prefork child: warn when it inherited the parent's MeterProvider, whose readers
        would export the parent's counts again from here under the parent's identity."""
        if self.metrics.exports_otlp and provider_inherited_from_parent():
            structlog.get_logger("telemetry_guard").warning(
                "metrics.provider_inherited",
                advice="create the MeterProvider in worker_process_init, not before the fork")

    def flush(self, timeout: float = 5.0) -> None:
        """Export the OpenTelemetry metrics now (a prefork child about to exit)."""
        if self.metrics.exports_otlp:
            flush_meter_provider(timeout)
