"""Tests for the OTLP metric families: what a Prometheus fed by OTLP shows equals /metrics."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import metrics as otel_api
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry
from prometheus_client.utils import floatToGoString
from structlog.testing import capture_logs

from telemetry_guard.breaker import CircuitBreaker
from telemetry_guard.core.classify import Severity
from telemetry_guard.core.events import BreakerChange
from telemetry_guard.sinks.breaker_states import BreakerStateCollector, LabelBound
from telemetry_guard.sinks.metrics import RUNTIME_BUCKETS, Metrics, MetricsSink, get_metrics
from tests.failure_events import event
from tests.forking import in_child
from tests.otlp_receiver import OtlpReceiver, Point, decode

_names = itertools.count()


def prometheus_name(point: Point) -> str:
    """The name a Prometheus fed by OTLP gives ``point`` (the OTel-Prometheus compatibility
    spec, as Prometheus' OTLP receiver and the Collector apply it, for the units used here):
    the unit's word is appended unless the name already has it, and ``_total`` to a
    monotonic sum."""
    name = point.metric
    unit = {"s": "seconds", "By": "bytes"}.get(point.unit, "")
    if unit and unit not in name.split("_"):
        name += "_" + unit
    if point.kind == "sum" and point.monotonic and not name.endswith("_total"):
        name += "_total"
    return name


def as_samples(points: list[Point]) -> set[tuple[str, frozenset[tuple[str, str]], float]]:
    """OTLP points as the Prometheus samples they become (histograms: cumulative buckets)."""
    samples: set[tuple[str, frozenset[tuple[str, str]], float]] = set()
    for p in points:
        name = prometheus_name(p)
        labels = {k: str(v) for k, v in p.attributes.items()}
        if p.kind == "histogram":
            running = 0
            for bound, count in zip((*p.bounds, float("inf")), p.bucket_counts, strict=True):
                running += count
                le = frozenset({**labels, "le": floatToGoString(bound)}.items())
                samples.add((name + "_bucket", le, float(running)))
            samples.add((name + "_count", frozenset(labels.items()), float(p.count)))
            samples.add((name + "_sum", frozenset(labels.items()), p.total))
        else:
            samples.add((name, frozenset(labels.items()), p.value))
    return samples


def registry_samples(registry: CollectorRegistry) -> set[tuple[str, frozenset[Any], float]]:
    """Every telemetry_guard sample of a registry, without the ``_created`` timestamps."""
    return {(s.name, frozenset(s.labels.items()), s.value)
            for family in registry.collect() for s in family.samples
            if s.name.startswith("telemetry_guard_") and not s.name.endswith("_created")}


def collected(reader: InMemoryMetricReader) -> list[Point]:
    """What the reader holds now, as the points an OTLP receiver decodes."""
    data = reader.get_metrics_data()
    return [] if data is None else decode(encode_metrics(data).SerializeToString())


def exercise(sink: MetricsSink) -> None:
    """One of every kind of call the guard makes."""
    sink.on_failure(event("retry"))
    sink.on_failure(event("retry"))
    sink.on_failure(event("give_up", severity=Severity.HIGH, reason="max_retries_exceeded"))
    sink.on_failure(event("give_up", task_name="t.ship", exception_type="KeyError",
                          severity=Severity.LOW, reason="retry_budget_exhausted"))
    sink.dead_letters_evicted("t.ship", 3)
    sink.on_breaker_change(BreakerChange(breaker="payments", from_state="closed",
                                         to_state="open"))
    sink.on_breaker_call("payments", "failure")
    sink.on_breaker_call("payments", "rejected")
    for seconds, outcome in ((0.003, "success"), (0.2, "retry"), (7.0, "failure"),
                             (400.0, "failure")):
        sink.runtime("t.charge", outcome).observe(seconds)
    sink.metrics.notifications.labels("email", "critical", "sent").inc()
    sink.metrics.telemetry_errors.labels(sink="errorlog").inc()


@pytest.fixture
def memory() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    """An SDK MeterProvider (not the global one) read in memory."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    yield server
    server.stop()


def test_points_over_otlp_become_the_same_prometheus_samples_as_metrics_endpoint(
        receiver: OtlpReceiver) -> None:
    """backend "both": every sample of /metrics, and nothing else, arrives over OTLP/HTTP
    under the name, labels and value a Prometheus fed by OTLP shows."""
    registry = CollectorRegistry()
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=receiver.endpoint),
                                           export_interval_millis=60_000)
    provider = MeterProvider(metric_readers=[reader],
                             resource=Resource.create({"service.instance.id": "unit"}))
    try:
        sink = MetricsSink(Metrics(registry, backend="both", meter_provider=provider))
        exercise(sink)
        assert provider.force_flush(10_000)
    finally:
        provider.shutdown()
    assert not receiver.errors
    points = [p for p in receiver.points if p.metric != "telemetry_guard_breaker_state"]
    expected = registry_samples(registry)
    assert as_samples(points) == expected
    assert ("telemetry_guard_task_failures_total",
            frozenset({"task": "t.charge", "exception": "ConnectionError",
                       "severity": "medium"}.items()), 2.0) in expected
    assert {p.instance for p in points} == {"unit"}


def test_counters_are_cumulative_monotonic_sums_and_runtime_a_seconds_histogram(
        memory: tuple[MeterProvider, InMemoryMetricReader]) -> None:
    """Instrument kinds, units and the runtime histogram's buckets, as exported."""
    provider, reader = memory
    exercise(MetricsSink(Metrics(CollectorRegistry(), backend="otlp", meter_provider=provider)))
    points = collected(reader)
    failures = [p for p in points if p.metric == "telemetry_guard_task_failures"]
    assert failures and all(p.kind == "sum" and p.monotonic and p.cumulative and p.unit == ""
                            for p in failures)
    [runtime] = {(p.kind, p.unit, p.bounds, p.cumulative) for p in points
                 if p.metric == "telemetry_guard_task_runtime_seconds"}
    assert runtime == ("histogram", "s", RUNTIME_BUCKETS[:-1], True)


def test_otlp_backend_leaves_the_registry_empty_and_prometheus_backend_the_provider(
        memory: tuple[MeterProvider, InMemoryMetricReader]) -> None:
    """Each backend writes only where it is asked to."""
    provider, reader = memory
    registry = CollectorRegistry()
    exercise(MetricsSink(Metrics(registry, backend="otlp", meter_provider=provider)))
    assert registry_samples(registry) == set()
    assert any(p.metric == "telemetry_guard_task_failures" for p in collected(reader))

    quiet_reader = InMemoryMetricReader()
    quiet = MeterProvider(metric_readers=[quiet_reader])
    try:
        registry = CollectorRegistry()
        exercise(MetricsSink(Metrics(registry, backend="prometheus", meter_provider=quiet)))
        assert registry_samples(registry)
        assert collected(quiet_reader) == []
    finally:
        quiet.shutdown()


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="prometheus, otlp, both"):
        Metrics(CollectorRegistry(), backend="statsd")


def test_labels_behave_like_prometheus_client(
        memory: tuple[MeterProvider, InMemoryMetricReader]) -> None:
    """Positional or named labels reach the same child; a wrong label count is an error."""
    provider, reader = memory
    failures = Metrics(backend="otlp", meter_provider=provider).task_failures
    child = failures.labels("t.a", "KeyError", "low")
    assert failures.labels(task="t.a", exception="KeyError", severity="low") is child
    child.inc()
    child.inc(2)
    with pytest.raises(ValueError):
        failures.labels("t.a", "KeyError")
    [point] = [p for p in collected(reader) if p.metric == "telemetry_guard_task_failures"]
    assert point.attributes == {"task": "t.a", "exception": "KeyError", "severity": "low"}
    assert point.value == 3


def test_breaker_state_gauge_reads_states_as_the_collector_does(
        memory: tuple[MeterProvider, InMemoryMetricReader]) -> None:
    """telemetry_guard_breaker_state over OTLP: 1 on the current state, 0 on the others,
    the breaker label bounded by the same bound as /metrics."""
    provider, reader = memory
    Metrics(backend="otlp", meter_provider=provider)
    names = [f"otel-gauge-{next(_names)}" for _ in range(2)]
    breakers = [CircuitBreaker(name, storage="memory") for name in names]
    breakers[0].force_open()
    bound = LabelBound(1)
    bound(names[0])  # admitted; every other breaker is then "other"
    previous, BreakerStateCollector.label = BreakerStateCollector.label, bound
    try:
        gauge = {(p.attributes["breaker"], p.attributes["state"]): p.value
                 for p in collected(reader) if p.metric == "telemetry_guard_breaker_state"}
        scraped = {(s.labels["breaker"], s.labels["state"]): s.value
                   for family in BreakerStateCollector().collect() for s in family.samples}
    finally:
        BreakerStateCollector.label = previous
    assert gauge[(names[0], "open")] == 1.0
    assert gauge[(names[0], "closed")] == 0.0
    assert gauge[(names[0], "half_open")] == 0.0
    assert names[1] not in {breaker for breaker, _ in gauge}  # past the bound: "other"
    assert gauge[("other", "closed")] == 1.0
    assert gauge == scraped


def test_a_collector_that_fails_never_raises_into_the_caller(
        caplog: pytest.LogCaptureFixture) -> None:
    """Counting and flushing go on while every export is refused (503) or cannot connect."""
    down = OtlpReceiver("error")
    providers = [MeterProvider(metric_readers=[PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=endpoint, timeout=0.5), export_interval_millis=50)])
        for endpoint in (down.endpoint, "http://127.0.0.1:9/v1/metrics")]
    try:
        sinks = [MetricsSink(Metrics(backend="otlp", meter_provider=p)) for p in providers]
        for _ in range(50):
            for sink in sinks:
                exercise(sink)
        for provider in providers:
            provider.force_flush(2_000)
        for sink in sinks:
            exercise(sink)
    finally:
        for provider in providers:
            provider.shutdown()
        down.stop()
    assert down.requests > 0
    failed = [r for r in caplog.records if r.name.startswith("opentelemetry.exporter")
              and r.levelname == "ERROR"]
    assert len(failed) >= 2


# -- prefork: instruments made before the provider, counts made before the fork ------------
def _child_with_its_own_provider() -> float:
    """A pool child: the provider is set in the child (worker_process_init), then it counts."""
    reader = InMemoryMetricReader()
    otel_api.set_meter_provider(MeterProvider(
        metric_readers=[reader], resource=Resource.create({"service.instance.id": "child"})))
    get_metrics("otlp").task_failures.labels("t.fork", "ValueError", "low").inc(2)
    return sum(p.value for p in collected(reader) if p.metric == "telemetry_guard_task_failures")


def test_proxy_instruments_record_into_a_provider_set_in_the_child_and_parent_counts_stay() -> None:
    """Instruments made before any provider exists record into the one the child sets, and
    what the parent counted before the fork is not exported by the child."""
    get_metrics("otlp").task_failures.labels("t.fork", "ValueError", "low").inc(5)
    assert in_child(_child_with_its_own_provider) == 2


def _parent_sets_provider_then_forks() -> list[str]:
    reader = InMemoryMetricReader()
    otel_api.set_meter_provider(MeterProvider(metric_readers=[reader]))
    sink = MetricsSink(get_metrics("otlp"))

    def child() -> list[str]:
        with capture_logs() as logs:
            sink.after_fork()
        return [entry["event"] for entry in logs]

    return in_child(child)  # type: ignore[return-value]


def test_a_provider_inherited_from_the_parent_is_reported_in_the_child() -> None:
    """A MeterProvider set before the fork would export the parent's counts again from each
    child: the child says so."""
    assert in_child(_parent_sets_provider_then_forks) == ["metrics.provider_inherited"]
