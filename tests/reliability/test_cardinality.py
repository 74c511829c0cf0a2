"""Label cardinality: 10,000 distinct task names cannot blow up the exported series.

Failure events for 10,000 task names (three exception types, four severities, retries and
give-ups mixed) and the failed run's runtime observation are fed to a ``MetricsSink`` with the
default bound (``telemetry_guard_max_label_values``, 500) on a fresh registry. Then
``generate_latest`` is parsed back: each metric's distinct ``task`` values are the first 500
names plus ``other``, its series at most that times the other labels' combinations, and no
count is lost (the overflow is counted under ``other``). A scrape of that registry costs what
its samples cost: the median of five ``generate_latest`` calls is compared with a plain
counter's of as many samples, in the same run.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from telemetry_guard.core.classify import Severity
from telemetry_guard.core.events import FailureEvent
from telemetry_guard.integration.config import Settings
from telemetry_guard.sinks.breaker_states import OTHER
from telemetry_guard.sinks.metrics import Metrics, MetricsSink

TASKS = 10_000
EXCEPTIONS = ("ValueError", "KeyError", "TimeoutError")
SEVERITIES = tuple(Severity)
OUTCOMES = ("retry", "failure")
#: A scrape may cost this many times a plain counter's with as many samples.
SCRAPE_RATIO = 3.0
SCRAPES = 5


def failure(i: int) -> FailureEvent:
    """The failure of task ``i``: a retry for odd ``i``, else a give-up."""
    retried = i % 2 == 1
    return FailureEvent(
        task_name=f"tenant_{i}.sync_orders", task_id=f"id-{i}", attempt=1, max_retries=3,
        exception_type=EXCEPTIONS[i % len(EXCEPTIONS)], exception_module="builtins",
        message=f"task {i} failed", traceback="", severity=SEVERITIES[i % len(SEVERITIES)],
        decision="retry" if retried else "give_up", delay_s=1.0 if retried else None,
        reason="" if retried else "not_retryable")


@pytest.fixture(scope="module")
def exposition() -> tuple[CollectorRegistry, str, int]:
    """A registry fed 10,000 task names' failures and runtimes; its text; the bound."""
    bound = Settings().max_label_values
    registry = CollectorRegistry()
    sink = MetricsSink(Metrics(registry=registry))
    for i in range(TASKS):
        event = failure(i)
        # as GuardedTask does: the failed run's time, under outcome retry or failure
        sink.on_failure(event)
        sink.runtime(event.task_name, "retry" if event.retried else "failure").observe(0.01)
    return registry, generate_latest(registry).decode(), bound


def series_by_family(text: str) -> dict[str, list[dict[str, str]]]:
    """The label sets of every sample, by metric family (histograms: one per bucket line)."""
    found: dict[str, list[dict[str, str]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[family.name].append(sample.labels)
    return found


def test_the_default_bound_is_500_and_the_sink_uses_it() -> None:
    """The bound under test is the documented default of max_label_values."""
    assert Settings().max_label_values == 500
    assert MetricsSink(Metrics(registry=CollectorRegistry())).task_label.limit == 500


def test_ten_thousand_task_names_export_at_most_the_bound_plus_other_per_metric(
        exposition: tuple[CollectorRegistry, str, int]) -> None:
    """Every family's task label takes ≤ 501 values; series ≤ 501 × other labels' combos."""
    _, text, bound = exposition
    families = series_by_family(text)
    combos = {  # the other labels' combinations each family can have, per task value
        "telemetry_guard_task_failures": len(EXCEPTIONS) * len(SEVERITIES),
        "telemetry_guard_task_retries": len(EXCEPTIONS),
        "telemetry_guard_task_giveups": len(EXCEPTIONS) * len(SEVERITIES),
    }
    for name, per_task in combos.items():
        samples = [labels for labels in families[name] if "task" in labels]
        tasks = {labels["task"] for labels in samples}
        assert len(tasks) <= bound + 1 and OTHER in tasks, (name, len(tasks))
        if name == "telemetry_guard_task_failures":  # every name failed: the bound is reached
            assert len(tasks) == bound + 1
        series = {tuple(sorted(labels.items())) for labels in samples}
        assert len(series) <= (bound + 1) * per_task, (name, len(series))
    runtime = {tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
               for labels in families["telemetry_guard_task_runtime_seconds"]}
    runtime_tasks = {dict(s)["task"] for s in runtime}
    assert OTHER in runtime_tasks and len(runtime_tasks) == bound + 1
    assert len(runtime) <= (bound + 1) * len(OUTCOMES)
    lines = sum(1 for line in text.splitlines() if not line.startswith("#"))
    print(f"\n{TASKS} task names → {lines} sample lines, {len(text) / 1024:.0f} KiB of text")


def test_overflowing_names_are_counted_as_other_so_no_failure_is_lost(
        exposition: tuple[CollectorRegistry, str, int]) -> None:
    """The 10,000 failures add up across the bounded series; 9,500 of them under other."""
    registry, _, bound = exposition
    failures = giveups = retries = other = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "telemetry_guard_task_failures_total":
                failures += sample.value
                other += sample.value if sample.labels["task"] == OTHER else 0.0
            elif sample.name == "telemetry_guard_task_giveups_total":
                giveups += sample.value
            elif sample.name == "telemetry_guard_task_retries_total":
                retries += sample.value
    assert failures == TASKS and retries == TASKS // 2 and giveups == TASKS // 2
    assert other == TASKS - bound


def scrape_time(registry: CollectorRegistry) -> float:
    """The median of a few ``generate_latest`` calls (after one untimed walk)."""
    generate_latest(registry)  # not timed: the first walk also faults its pages in
    timings = []
    for _ in range(SCRAPES):
        started = time.perf_counter()
        generate_latest(registry)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def test_a_scrape_costs_what_its_bounded_samples_cost(
        exposition: tuple[CollectorRegistry, str, int]) -> None:
    """A scrape of the bounded registry costs about what a plain counter with as many
    samples costs, timed in the same run: no work grows with the 10,000 names seen."""
    registry, text, _ = exposition
    samples = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    reference = CollectorRegistry()
    counter = Counter("reference_total", "as many samples", ["key"], registry=reference)
    for i in range(samples // 2):  # a counter child exposes _total and _created
        counter.labels(str(i)).inc()
    ours, plain = scrape_time(registry), scrape_time(reference)
    print(f"\nscrape of {samples} samples: median {ours * 1000:.1f} ms; "
          f"a plain counter with as many: {plain * 1000:.1f} ms")
    assert ours < SCRAPE_RATIO * plain
