"""Tests for telemetry_guard.sinks.metrics: three separate facts, bounded labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from telemetry_guard.core.classify import Severity
from telemetry_guard.core.events import BreakerChange
from telemetry_guard.sinks.breaker_states import OTHER, LabelBound
from telemetry_guard.sinks.metrics import Metrics, MetricsSink
from tests.failure_events import event


def fresh() -> tuple[CollectorRegistry, MetricsSink]:
    """A metrics sink on its own registry, so counts start at zero."""
    registry = CollectorRegistry()
    return registry, MetricsSink(Metrics(registry=registry), max_label_values=3)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0 when absent."""
    return registry.get_sample_value(name, labels) or 0.0


def test_retry_counts_a_failure_and_a_retry_but_no_giveup() -> None:
    """A retried failure increments failures and retries, not give-ups."""
    registry, sink = fresh()
    sink.on_failure(event("retry"))
    assert value(registry, "telemetry_guard_task_failures_total", task="t.charge",
                 exception="ConnectionError", severity="medium") == 1
    assert value(registry, "telemetry_guard_task_retries_total", task="t.charge",
                 exception="ConnectionError") == 1
    assert value(registry, "telemetry_guard_task_giveups_total", task="t.charge",
                 exception="ConnectionError", severity="medium") == 0


def test_giveup_counts_a_failure_and_a_giveup_but_no_retry() -> None:
    """A given-up failure increments failures and give-ups with its severity, not retries."""
    registry, sink = fresh()
    sink.on_failure(event("give_up", severity=Severity.HIGH, reason="max_retries_exceeded"))
    assert value(registry, "telemetry_guard_task_failures_total", task="t.charge",
                 exception="ConnectionError", severity="high") == 1
    assert value(registry, "telemetry_guard_task_giveups_total", task="t.charge",
                 exception="ConnectionError", severity="high") == 1
    assert value(registry, "telemetry_guard_task_retries_total", task="t.charge",
                 exception="ConnectionError") == 0
    assert value(registry, "telemetry_guard_retry_budget_exhausted_total", task="t.charge") == 0


def test_two_retries_then_giveup_are_three_failures_two_retries_one_giveup() -> None:
    """Failures, retries and give-ups are counted as three separate facts."""
    registry, sink = fresh()
    for decision in ("retry", "retry", "give_up"):
        sink.on_failure(event(decision))
    assert value(registry, "telemetry_guard_task_failures_total", task="t.charge",
                 exception="ConnectionError", severity="medium") == 3
    assert value(registry, "telemetry_guard_task_retries_total", task="t.charge",
                 exception="ConnectionError") == 2
    assert value(registry, "telemetry_guard_task_giveups_total", task="t.charge",
                 exception="ConnectionError", severity="medium") == 1


def test_giveup_by_retry_budget_is_also_counted_as_budget_exhausted() -> None:
    """A give-up with reason retry_budget_exhausted increments that counter for the task."""
    registry, sink = fresh()
    sink.on_failure(event("give_up", reason="retry_budget_exhausted"))
    assert value(registry, "telemetry_guard_retry_budget_exhausted_total", task="t.charge") == 1


def test_task_labels_beyond_the_bound_become_other() -> None:
    """With max_label_values=3, a fourth and fifth distinct task are counted under "other"."""
    registry, sink = fresh()
    for name in ("t.a", "t.b", "t.c", "t.d", "t.e", "t.a"):
        sink.on_failure(event("retry", task_name=name))
    assert value(registry, "telemetry_guard_task_retries_total", task="t.a",
                 exception="ConnectionError") == 2
    for name in ("t.b", "t.c"):
        assert value(registry, "telemetry_guard_task_retries_total", task=name,
                     exception="ConnectionError") == 1
    assert value(registry, "telemetry_guard_task_retries_total", task=OTHER,
                 exception="ConnectionError") == 2
    assert value(registry, "telemetry_guard_task_retries_total", task="t.d",
                 exception="ConnectionError") == 0


def test_exception_labels_are_bounded_separately_from_tasks() -> None:
    """Exception names have their own bound: past it they become "other"."""
    registry, sink = fresh()
    for exc in ("E1", "E2", "E3", "E4"):
        sink.on_failure(event("retry", exception_type=exc))
    assert value(registry, "telemetry_guard_task_retries_total", task="t.charge",
                 exception="E3") == 1
    assert value(registry, "telemetry_guard_task_retries_total", task="t.charge",
                 exception=OTHER) == 1


def test_label_bound_admits_known_values_after_the_limit() -> None:
    """LabelBound keeps returning values it admitted, and "other" for every newcomer."""
    bound = LabelBound(2)
    assert [bound(v) for v in ("x", "y", "z", "x", "y", "w")] == ["x", "y", OTHER, "x", "y", OTHER]


def test_label_bound_of_zero_admits_nothing() -> None:
    """A limit of 0 maps every value to "other"."""
    bound = LabelBound(0)
    assert bound("x") == OTHER


def test_runtime_returns_a_cached_child_that_observes() -> None:
    """runtime() gives the same histogram child for the same task and outcome, and it records."""
    registry, sink = fresh()
    child = sink.runtime("t.charge", "success")
    assert sink.runtime("t.charge", "success") is child
    assert sink.runtime("t.charge", "failure") is not child
    child.observe(0.02)
    child.observe(0.2)
    assert value(registry, "telemetry_guard_task_runtime_seconds_count", task="t.charge",
                 outcome="success") == 2
    assert value(registry, "telemetry_guard_task_runtime_seconds_bucket", task="t.charge",
                 outcome="success", le="0.025") == 1


def test_runtime_task_label_is_bounded_too() -> None:
    """runtime() for a task past the label bound records under "other"."""
    registry, sink = fresh()
    for name in ("t.a", "t.b", "t.c", "t.d"):
        sink.runtime(name, "success").observe(1.0)
    assert value(registry, "telemetry_guard_task_runtime_seconds_count", task=OTHER,
                 outcome="success") == 1


def test_breaker_change_counts_a_transition() -> None:
    """A breaker change increments breaker_transitions_total with from and to states."""
    registry, sink = fresh()
    sink.on_breaker_change(BreakerChange("payments", "closed", "open"))
    assert value(registry, "telemetry_guard_breaker_transitions_total", breaker="payments",
                 from_state="closed", to_state="open") == 1


def test_breaker_labels_beyond_the_bound_become_other_in_calls_and_transitions() -> None:
    """Six host breakers, bound 3: the first three are named, the rest count under other."""
    registry, sink = fresh()
    hosts = [f"http:hook{i}.example" for i in range(6)]
    for host in hosts:
        sink.on_breaker_call(host, "success")
        sink.on_breaker_change(BreakerChange(host, "closed", "open"))
    for host in hosts[:3]:
        assert value(registry, "telemetry_guard_breaker_calls_total", breaker=host,
                     outcome="success") == 1
    assert value(registry, "telemetry_guard_breaker_calls_total", breaker=OTHER,
                 outcome="success") == 3
    assert value(registry, "telemetry_guard_breaker_transitions_total", breaker=OTHER,
                 from_state="closed", to_state="open") == 3
    assert value(registry, "telemetry_guard_breaker_calls_total", breaker=hosts[4],
                 outcome="success") == 0
