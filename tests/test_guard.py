"""Tests for TelemetryGuard: replacing a guard, countdown caps, per-task lookups."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, signals
from structlog.testing import capture_logs

from telemetry_guard import GuardedTask, RetryPolicy, Severity, TelemetryGuard
from telemetry_guard.sinks.errorlog import ErrorLogSink
from telemetry_guard.sinks.logging import LogSink
from telemetry_guard.sinks.metrics import MetricsSink
from telemetry_guard.sinks.tracing import TracingSink

BROKER = "redis://127.0.0.1:1/0"


@pytest.fixture
def app() -> Iterator[Celery]:
    """A Celery app that is never connected; whatever guard it ends with is closed."""
    app = Celery("x", broker=BROKER, set_as_current=False)
    yield app
    guard = getattr(app, "_telemetry_guard", None)
    if guard is not None:
        guard.close()


def our_receivers(signal: Any, app: Celery) -> list[Any]:
    """The live receivers telemetry_guard connected to ``signal`` for ``app``."""
    live = [receiver() if isinstance(receiver, weakref.ref) else receiver
            for key, receiver in signal.receivers if str(key[0]).startswith("telemetry_guard:")]
    return [receiver for receiver in live
            if receiver is not None and receiver.__self__.guard.app is app]


def test_guard_registers_itself_on_the_app(app: Celery) -> None:
    """The guard is reachable as app._telemetry_guard and has connected task_failure."""
    guard = TelemetryGuard(app)
    assert app._telemetry_guard is guard
    assert [r.__self__.guard for r in our_receivers(signals.task_failure, app)] == [guard]


def test_second_guard_replaces_the_first(app: Celery) -> None:
    """A second guard for one app disconnects the first's handlers and takes its place."""
    before = len(signals.task_failure.receivers)
    first = TelemetryGuard(app)
    assert len(signals.task_failure.receivers) == before + 1
    second = TelemetryGuard(app)
    assert len(signals.task_failure.receivers) == before + 1
    assert app._telemetry_guard is second
    handlers = our_receivers(signals.task_failure, app)
    assert [h.__self__.guard for h in handlers] == [second]
    assert first is not second
    for signal in (signals.worker_process_init, signals.worker_shutdown):
        assert [h.__self__.guard for h in our_receivers(signal, app)] == [second]


def test_closing_a_replaced_guard_leaves_the_new_one_connected(app: Celery) -> None:
    """Closing a guard that was already replaced does not unwire its replacement."""
    first = TelemetryGuard(app)
    second = TelemetryGuard(app)
    first.close()
    assert app._telemetry_guard is second
    assert [h.__self__.guard for h in our_receivers(signals.task_failure, app)] == [second]


def test_close_disconnects_and_unregisters(app: Celery) -> None:
    """close() removes the guard's signal handlers and app._telemetry_guard."""
    before = len(signals.task_failure.receivers)
    guard = TelemetryGuard(app)
    guard.close()
    assert len(signals.task_failure.receivers) == before
    assert not hasattr(app, "_telemetry_guard")


def test_guards_of_two_apps_are_independent(app: Celery) -> None:
    """A guard on another app does not replace or disconnect this app's guard."""
    other = Celery("y", broker=BROKER, set_as_current=False)
    mine = TelemetryGuard(app)
    theirs = TelemetryGuard(other)
    try:
        assert app._telemetry_guard is mine
        assert [h.__self__.guard for h in our_receivers(signals.task_failure, app)] == [mine]
    finally:
        theirs.close()
    assert [h.__self__.guard for h in our_receivers(signals.task_failure, app)] == [mine]


def test_cap_countdown_caps_at_ninety_percent_of_visibility_timeout(app: Celery) -> None:
    """With visibility_timeout 100, a countdown of 500 s becomes 90 s; shorter ones are kept."""
    app.conf.broker_transport_options = {"visibility_timeout": 100}
    guard = TelemetryGuard(app)
    assert guard.cap_countdown("t.a", 500.0) == pytest.approx(90.0)
    assert guard.cap_countdown("t.a", 89.0) == 89.0
    assert guard.cap_countdown("t.a", 90.0) == 90.0


def test_cap_countdown_warns_once_per_task_name(app: Celery) -> None:
    """retry.countdown_capped is logged once for each task name however often it is capped."""
    app.conf.broker_transport_options = {"visibility_timeout": 100}
    guard = TelemetryGuard(app)
    with capture_logs() as logs:
        guard.cap_countdown("t.a", 500.0)
        guard.cap_countdown("t.a", 1000.0)
        guard.cap_countdown("t.b", 10.0)
        guard.cap_countdown("t.b", 200.0)
        guard.cap_countdown("t.a", 300.0)
    capped = [e for e in logs if e["event"] == "retry.countdown_capped"]
    assert [e["task_name"] for e in capped] == ["t.a", "t.b"]
    assert capped[0]["requested_s"] == 500.0
    assert capped[0]["capped_s"] == 90.0
    assert capped[0]["horizon_s"] == 100.0
    assert capped[1]["requested_s"] == 200.0


def test_cap_countdown_without_horizon_keeps_the_delay(app: Celery) -> None:
    """A memory broker has no redelivery horizon: countdowns are not capped or logged."""
    memory_app = Celery("m", broker="memory://", set_as_current=False)
    guard = TelemetryGuard(memory_app)
    try:
        with capture_logs() as logs:
            assert guard.cap_countdown("t.a", 10_000.0) == 10_000.0
        assert logs == []
    finally:
        guard.close()


def test_policy_for_prefers_the_task_option(app: Celery) -> None:
    """A task's retry_policy option wins over guard.retry_policies and the default."""
    own = RetryPolicy(max_retries=9)
    guard = TelemetryGuard(app)

    @app.task(base=GuardedTask, name="t.own", retry_policy=own)
    def task() -> None: ...

    guard.retry_policies["t.own"] = RetryPolicy(max_retries=1)
    assert guard.policy_for(task) is own


def test_policy_for_uses_the_guards_table_next(app: Celery) -> None:
    """Without a task option, guard.retry_policies[name] is used."""
    table = RetryPolicy(max_retries=4)
    guard = TelemetryGuard(app)

    @app.task(base=GuardedTask, name="t.table")
    def task() -> None: ...

    guard.retry_policies["t.table"] = table
    assert guard.policy_for(task) is table


def test_policy_for_falls_back_to_the_default(app: Celery) -> None:
    """With neither option nor table entry, the settings' default policy is used."""
    default = RetryPolicy(max_retries=6)
    guard = TelemetryGuard(app, default_retry_policy=default)

    @app.task(base=GuardedTask, name="t.plain")
    def task() -> None: ...

    guard.retry_policies["t.other"] = RetryPolicy(max_retries=1)
    assert guard.policy_for(task) is default


def test_severity_of_honours_the_task_option(app: Celery) -> None:
    """A task's severity option overrides the classifier; without it the classifier decides."""
    guard = TelemetryGuard(app)

    @app.task(base=GuardedTask, name="t.critical", severity="critical")
    def critical() -> None: ...

    @app.task(base=GuardedTask, name="t.high", severity=Severity.HIGH)
    def high() -> None: ...

    @app.task(base=GuardedTask, name="t.default")
    def default() -> None: ...

    assert guard.severity_of(critical, ValueError("x")) is Severity.CRITICAL
    assert guard.severity_of(high, ValueError("x")) is Severity.HIGH
    assert guard.severity_of(default, ValueError("x")) is Severity.LOW
    assert guard.severity_of(default, ConnectionError("x")) is Severity.MEDIUM


def test_severity_of_uses_the_guards_classifier_rules(app: Celery) -> None:
    """Rules registered on guard.classifier decide for tasks without a severity option."""
    guard = TelemetryGuard(app)
    guard.classifier.register(KeyError, Severity.CRITICAL)

    @app.task(base=GuardedTask, name="t.lookup")
    def task() -> None: ...

    assert guard.severity_of(task, KeyError("x")) is Severity.CRITICAL


def test_without_redis_url_there_is_no_error_log_sink(app: Celery) -> None:
    """TelemetryGuard(app, redis_url=None) builds no ErrorLogSink, even on a Redis broker."""
    guard = TelemetryGuard(app, redis_url=None)
    kinds = [type(s) for s in guard.dispatcher.sinks]
    assert ErrorLogSink not in kinds
    assert not guard.keeps_dead_letters


def test_non_redis_broker_builds_no_error_log_sink() -> None:
    """On a memory broker with no redis_url, the sinks are log, metrics and tracing only."""
    memory_app = Celery("m", broker="memory://", set_as_current=False)
    guard = TelemetryGuard(memory_app)
    try:
        assert [type(s) for s in guard.dispatcher.sinks] == [LogSink, MetricsSink, TracingSink]
    finally:
        guard.close()


def test_redis_broker_builds_an_error_log_sink(app: Celery) -> None:
    """With the broker's Redis as default, an ErrorLogSink on that URL is among the sinks."""
    guard = TelemetryGuard(app, key_prefix="tg_test:")
    errorlogs = [s for s in guard.dispatcher.sinks if isinstance(s, ErrorLogSink)]
    assert [(s.redis_url, s.errors_key) for s in errorlogs] == [(BROKER, "tg_test:errors")]


def test_tracing_off_builds_no_tracing_sink(app: Celery) -> None:
    """tracing=False leaves the TracingSink out and start_span returns None."""
    guard = TelemetryGuard(app, tracing=False)
    assert TracingSink not in [type(s) for s in guard.dispatcher.sinks]
    assert guard.start_span(object(), object()) is None


def test_a_guarded_task_without_a_guard_runs_plainly_and_builds_none(app: Celery) -> None:
    """No guard is made behind the user's back: the task runs as Celery runs it, said once."""
    app.conf.task_always_eager = False

    @app.task(base=GuardedTask, name="t.unguarded", retry_policy=RetryPolicy(max_retries=3))
    def unguarded(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x * 2

    with capture_logs() as logs:
        assert unguarded.apply(args=(21,)).get() == 42
        failed = unguarded.apply(args=(-1,))
        assert unguarded.apply(args=(1,)).get() == 2
    assert getattr(app, "_telemetry_guard", None) is None
    assert isinstance(failed.result, ValueError) and failed.state == "FAILURE"  # not retried
    warned = [e for e in logs if e["event"] == "task.unguarded"]
    assert [e["task_name"] for e in warned] == ["t.unguarded"]


@pytest.fixture
def process_rules() -> Iterator[None]:
    """Rules registered process-wide in a test are gone after it."""
    from telemetry_guard.core.classify import DEFAULT_CLASSIFIER

    saved = DEFAULT_CLASSIFIER._rules
    yield
    DEFAULT_CLASSIFIER._rules = saved


def test_process_wide_rules_apply_to_guarded_tasks_after_the_guards_own(
        app: Celery, process_rules: None) -> None:
    """``classify``'s rules apply process-wide, the guard's classifier included."""
    from telemetry_guard.core.classify import DEFAULT_CLASSIFIER, classify

    guard = TelemetryGuard(app)

    @app.task(name="t.classified")
    def classified() -> None:
        """Never run: only its options are read."""

    DEFAULT_CLASSIFIER.register(KeyError, Severity.HIGH)
    DEFAULT_CLASSIFIER.register(LookupError, Severity.MEDIUM)
    guard.classifier.register(KeyError, Severity.CRITICAL)
    assert guard.severity_of(classified, KeyError("x")) is Severity.CRITICAL  # the guard's first
    assert guard.severity_of(classified, IndexError("x")) is Severity.MEDIUM  # then process-wide
    assert classify(KeyError("x")) is Severity.HIGH  # the guard's rules stay the guard's
    assert guard.severity_of(classified, ConnectionError("x")) is Severity.MEDIUM  # defaults
