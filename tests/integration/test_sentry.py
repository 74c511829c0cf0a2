"""The Sentry sink: the real sentry-sdk posting to a private HTTP endpoint, a real worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import celery.app.trace as celery_trace
import celery.worker.consumer.consumer as celery_consumer
import pytest
import sentry_sdk
from celery import Celery
from celery.contrib.testing.worker import start_worker
from prometheus_client import REGISTRY
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.transport import HttpTransport
from structlog.testing import capture_logs

from telemetry_guard import GuardedTask, RetryPolicy, TelemetryGuard
from telemetry_guard.sinks.sentry import SentrySink
from tests.sentry_server import SentryServer

NO_RETRY = RetryPolicy(max_retries=0)
ONE_RETRY = RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.05,
                        retry_on=(ConnectionError,))


def sample(name: str, **labels: str) -> float:
    """A metric's current value in this process (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def notifications(severity: str, outcome: str) -> float:
    return sample("telemetry_guard_notifications_total", channel="sentry",
                  severity=severity, outcome=outcome)


def reset_sentry() -> None:
    """Close whatever client is current and leave sentry-sdk with none (Sentry off)."""
    sentry_sdk.get_client().close(timeout=2.0)
    sentry_sdk.get_global_scope().set_client(None)
    sentry_sdk.get_global_scope().clear_breadcrumbs()


@pytest.fixture(autouse=True)
def sentry_off() -> Iterator[None]:
    """sentry-sdk state is process-global: every test starts and ends with no client."""
    reset_sentry()
    yield
    reset_sentry()


@pytest.fixture(autouse=True)
def worker_sees_sentry_patches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build task tracers through ``celery.app.trace.build_tracer`` as it is when called.

    The CeleryIntegration wraps tasks by patching that function, which works when sentry-sdk
    is initialised before the worker modules are imported (as in a real worker process).
    Pytest imported them first, so the consumer holds the unpatched function: re-bind it.
    """
    monkeypatch.setattr(celery_consumer, "build_tracer",
                        lambda *args, **kwargs: celery_trace.build_tracer(*args, **kwargs))


@pytest.fixture
def server() -> Iterator[SentryServer]:
    """A private endpoint answering 200 that records envelopes."""
    srv = SentryServer("ok")
    yield srv
    srv.stop()


def worker(app: Celery) -> Any:
    return start_worker(app, pool="solo", perform_ping_check=False, loglevel="CRITICAL",
                        shutdown_timeout=10)


def run(result: Any) -> Any:
    """The task's return value, or the name of the exception it raised."""
    try:
        return result.get(timeout=20)
    except Exception as exc:
        return type(exc).__name__


def test_high_failure_is_one_redacted_event_with_tags_fingerprint_and_celery_context(
        celery_app: Celery, server: SentryServer) -> None:
    """A HIGH failure: one event, our tags, fingerprint, level, context, frames; no secret."""
    guard = TelemetryGuard(celery_app, sentry_dsn=server.dsn)

    @celery_app.task(bind=True, base=GuardedTask, name="t.sentry.high", severity="high",
                     retry_policy=NO_RETRY, shared=False)
    def charge(self: Any, order_id: int, blob: str, **kwargs: Any) -> None:
        raise RuntimeError("charge failed token=canary-tok")

    before = notifications("high", "sent")
    with capture_logs() as logs, worker(celery_app):
        result = charge.apply_async(args=(7, "x" * 5000),
                                    kwargs={"password": "canary-pw", "note": "ok"})
        assert run(result) == "RuntimeError"
        guard.flush()

    assert server.errors == []
    assert server.paths and all(p == "/api/1/envelope/" for p in server.paths)
    events = server.events()
    assert len(events) == 1
    event = events[0]
    assert event["level"] == "error"
    assert event["fingerprint"] == ["{{ default }}", "t.sentry.high"]  # Sentry's grouping, per task
    assert event["tags"]["task_name"] == "t.sentry.high"
    assert event["tags"]["severity"] == "high"
    assert event["tags"]["exception_type"] == "RuntimeError"
    assert event["tags"]["queue"] == "tests"
    celery = event["contexts"]["celery"]
    assert celery["task_id"] == result.id and celery["retries"] == 0
    assert celery["args"] == [7, "x" * 2048 + "…[truncated 2952 chars]"]  # redacted once
    assert celery["kwargs"] == {"password": "[REDACTED]", "note": "ok"}
    exception = event["exception"]["values"][-1]
    assert exception["type"] == "RuntimeError"
    assert exception["value"] == "charge failed token=[REDACTED]"
    assert exception["mechanism"]["type"] == "telemetry_guard"
    frames = exception["stacktrace"]["frames"]
    assert frames[-1]["function"] == "charge"
    # The guard's wrapper frame is hidden: the stack (and so Sentry's grouping) is the
    # task's own, as without GuardedTask.
    assert [f for f in frames if str(f.get("module")).startswith("telemetry_guard")] == []
    raw = server.raw()
    assert b"canary-pw" not in raw and b"canary-tok" not in raw

    assert notifications("high", "sent") - before == 1
    sent = [e for e in logs if e["event"] == "notification.sent"]
    assert len(sent) == 1
    assert sent[0]["channel"] == "sentry" and sent[0]["task_name"] == "t.sentry.high"
    assert sent[0]["task_id"] == result.id and sent[0]["severity"] == "high"


@pytest.mark.parametrize(("severity", "routes", "level"), [
    ("critical", None, "fatal"),
    ("medium", {"medium": ["sentry"]}, "warning"),
    ("low", {"low": ["sentry"]}, "info"),
])
def test_level_follows_severity(celery_app: Celery, server: SentryServer, severity: str,
                                routes: Any, level: str) -> None:
    """CRITICAL is ``fatal``; lower severities routed to Sentry by the task are warning/info."""
    guard = TelemetryGuard(celery_app, sentry_dsn=server.dsn)

    @celery_app.task(bind=True, base=GuardedTask, name=f"t.sentry.level_{severity}",
                     severity=severity, routes=routes, retry_policy=NO_RETRY, shared=False)
    def fail(self: Any) -> None:
        raise LookupError("gone")

    with worker(celery_app):
        assert run(fail.delay()) == "LookupError"
        guard.flush()
    events = server.events()
    assert [(e["level"], e["tags"]["severity"]) for e in events] == [(level, severity)]


def test_low_failure_is_not_reported_and_high_one_is(
        celery_app: Celery, server: SentryServer) -> None:
    """Default routing: a LOW failure sends nothing, the HIGH one in the same run arrives."""
    guard = TelemetryGuard(celery_app, sentry_dsn=server.dsn)

    @celery_app.task(bind=True, base=GuardedTask, name="t.sentry.low", retry_policy=NO_RETRY,
                     shared=False)
    def fail_low(self: Any) -> None:
        raise KeyError("low")

    @celery_app.task(bind=True, base=GuardedTask, name="t.sentry.high_too", severity="high",
                     retry_policy=NO_RETRY, shared=False)
    def fail_high(self: Any) -> None:
        raise KeyError("high")

    with worker(celery_app):
        assert run(fail_low.delay()) == "KeyError"
        assert run(fail_high.delay()) == "KeyError"
        guard.flush()
    events = server.events()
    assert [e["tags"]["task_name"] for e in events] == ["t.sentry.high_too"]


@pytest.mark.parametrize("default_integrations", [True, False])
def test_celery_integration_enabled_by_the_app_reports_each_failure_once(
        celery_app: Celery, server: SentryServer, default_integrations: bool) -> None:
    """App-initialised sentry-sdk with CeleryIntegration: one event per HIGH failure, none for
    LOW, none for Retry; a plain task's failure is still the integration's."""
    sentry_sdk.init(dsn=server.dsn, integrations=[CeleryIntegration()],
                    default_integrations=default_integrations)
    guard = TelemetryGuard(celery_app)  # no sentry_dsn: uses the application's client
    attempts = {"flaky": 0}

    @celery_app.task(bind=True, base=GuardedTask, name="t.sentry.app_high", severity="high",
                     retry_policy=NO_RETRY, shared=False)
    def high(self: Any, **kwargs: Any) -> None:
        raise RuntimeError("token=canary-tok")

    @celery_app.task(bind=True, base=GuardedTask, name="t.sentry.app_low",
                     retry_policy=NO_RETRY, shared=False)
    def low(self: Any) -> None:
        raise ValueError("low")

    @celery_app.task(bind=True, base=GuardedTask, name="t.sentry.app_flaky", severity="high",
                     retry_policy=ONE_RETRY, shared=False)
    def flaky(self: Any) -> str:
        attempts["flaky"] += 1
        if attempts["flaky"] == 1:
            raise ConnectionError("reset")
        return "ok"

    @celery_app.task(name="t.sentry.plain", shared=False)
    def plain() -> None:
        raise OSError("plain task api_key=canary-key")

    with worker(celery_app):
        assert run(high.apply_async(kwargs={"password": "canary-pw"})) == "RuntimeError"
        assert run(low.delay()) == "ValueError"
        assert run(flaky.delay()) == "ok"
        assert run(plain.delay()) == "OSError"
        guard.flush()

    assert server.errors == []
    events = server.events()
    by_mechanism: dict[str, list[str]] = {}
    for e in events:
        value = e["exception"]["values"][-1]
        by_mechanism.setdefault(value["mechanism"]["type"], []).append(e["tags"]["task_name"])
    # Routed (HIGH): once, the guard's own event; the integration's copy is dropped.
    assert sorted(by_mechanism.pop("telemetry_guard")) == ["t.sentry.app_flaky",
                                                           "t.sentry.app_high"]
    # Not routed (LOW, and the plain task's MEDIUM): the integration's own event is kept,
    # as without the guard, with the guard's tags and fingerprint.
    assert sorted(by_mechanism.pop("celery")) == ["t.sentry.app_low", "t.sentry.plain"]
    assert by_mechanism == {}
    assert len(events) == 4
    theirs = {e["tags"]["task_name"]: e for e in events
              if e["exception"]["values"][-1]["mechanism"]["type"] == "celery"}
    assert theirs["t.sentry.app_low"]["tags"]["severity"] == "low"
    assert theirs["t.sentry.app_low"]["fingerprint"] == ["{{ default }}", "t.sentry.app_low"]
    assert theirs["t.sentry.plain"]["tags"]["exception_type"] == "OSError"
    assert theirs["t.sentry.plain"]["level"] == "error"  # the integration's level is kept
    assert "celery_task_id" in theirs["t.sentry.plain"]["tags"]  # and its own tags
    types = {v["type"] for e in events for v in e["exception"]["values"]}
    assert "Retry" not in types
    raw = server.raw()
    assert b"canary-pw" not in raw and b"canary-tok" not in raw
    assert b"canary-key" not in raw  # the app's own events get our redaction too


def test_fingerprint_setting_task_exception_groups_by_task_and_exception_type(
        celery_app: Celery, server: SentryServer) -> None:
    """``telemetry_guard_sentry_fingerprint = "task_exception"``: [task name, exception type]."""
    celery_app.conf.telemetry_guard_sentry_fingerprint = "task_exception"
    guard = TelemetryGuard(celery_app, sentry_dsn=server.dsn)

    @celery_app.task(bind=True, base=GuardedTask, name="t.sentry.grouped", severity="high",
                     retry_policy=NO_RETRY, shared=False)
    def fail(self: Any) -> None:
        raise RuntimeError("boom")

    with worker(celery_app):
        assert run(fail.delay()) == "RuntimeError"
        guard.flush()
    assert [e["fingerprint"] for e in server.events()] == [["t.sentry.grouped", "RuntimeError"]]


def test_fingerprint_setting_rejects_an_unknown_mode(celery_app: Celery) -> None:
    with pytest.raises(ValueError, match="sentry_fingerprint.*default, task_exception"):
        TelemetryGuard(celery_app, sentry_fingerprint="per_host")


def test_failures_not_routed_become_breadcrumbs_of_later_events(
        celery_app: Celery, server: SentryServer) -> None:
    """LOW and MEDIUM failures send no event of their own (the guard owns the client) but
    show, redacted, as breadcrumbs of the next event in the same worker."""
    guard = TelemetryGuard(celery_app, sentry_dsn=server.dsn)

    @celery_app.task(bind=True, base=GuardedTask, name="t.sentry.crumb_low", severity="low",
                     retry_policy=NO_RETRY, shared=False)
    def low(self: Any) -> None:
        raise KeyError("token=canary-tok")

    @celery_app.task(name="t.sentry.crumb_plain", shared=False)
    def plain() -> None:
        raise LookupError("medium, from a plain task")

    @celery_app.task(bind=True, base=GuardedTask, name="t.sentry.crumb_high", severity="high",
                     retry_policy=NO_RETRY, shared=False)
    def high(self: Any) -> None:
        raise RuntimeError("high")

    guard.classifier.register(LookupError, "medium")
    with worker(celery_app):
        assert run(low.delay()) == "KeyError"
        assert run(plain.delay()) == "LookupError"
        assert run(high.delay()) == "RuntimeError"
        guard.flush()

    events = server.events()
    assert [e["tags"]["task_name"] for e in events] == ["t.sentry.crumb_high"]
    crumbs = [c for c in events[0]["breadcrumbs"]["values"] if c["category"] == "telemetry_guard"]
    assert [(c["data"]["severity"], c["level"]) for c in crumbs] == [
        ("low", "info"), ("medium", "warning")]
    assert crumbs[0]["message"].startswith("t.sentry.crumb_low: KeyError:")
    assert crumbs[1]["message"].startswith("t.sentry.crumb_plain: LookupError:")
    assert b"canary-tok" not in server.raw()


def test_guard_owned_client_reports_a_routed_plain_task_failure_once(
        celery_app: Celery, server: SentryServer) -> None:
    """A plain task's HIGH failure, with the client the guard initialised (its
    CeleryIntegration captures first): one event, with the guard's tags and level."""
    guard = TelemetryGuard(celery_app, sentry_dsn=server.dsn)
    guard.classifier.register(PermissionError, "critical")

    @celery_app.task(name="t.sentry.plain_critical", shared=False)
    def plain(**kwargs: Any) -> None:
        raise PermissionError("denied secret=canary-sec")

    before = notifications("critical", "sent")
    with worker(celery_app):
        assert run(plain.apply_async(kwargs={"password": "canary-pw"})) == "PermissionError"
        guard.flush()
    events = server.events()
    assert len(events) == 1
    assert events[0]["tags"]["severity"] == "critical" and events[0]["level"] == "fatal"
    assert events[0]["fingerprint"] == ["{{ default }}", "t.sentry.plain_critical"]
    assert notifications("critical", "sent") - before == 1
    raw = server.raw()
    assert b"canary-sec" not in raw and b"canary-pw" not in raw


@pytest.mark.parametrize("mode", ["ok", "error", "hang"])
def test_sentry_answering_500_or_never_changes_no_task_outcome(
        celery_app: Celery, mode: Any) -> None:
    """Endpoint healthy, answering 500, or never answering: same outcomes, tasks never wait."""
    down = SentryServer(mode)
    try:
        guard = TelemetryGuard(celery_app, sentry_dsn=down.dsn)
        attempts: dict[str, int] = {}

        @celery_app.task(bind=True, base=GuardedTask, name="t.sentry.load", severity="high",
                         retry_policy=ONE_RETRY, shared=False)
        def load(self: Any, kind: str, key: str) -> str:
            attempts[key] = attempts.get(key, 0) + 1
            if kind == "recovers" and attempts[key] == 1:
                raise ConnectionError("reset")
            if kind == "broken":
                raise ValueError("broken")
            return f"{kind}:{self.request.retries}"

        kinds = ["ok", "broken", "recovers", "broken", "ok"]
        before_sent = notifications("high", "sent")
        before_errors = sample("telemetry_guard_telemetry_errors_total", sink="sentry")
        started = time.monotonic()
        with worker(celery_app):
            results = [load.delay(kind, f"{kind}-{i}") for i, kind in enumerate(kinds)]
            outcomes = [run(r) for r in results]
            elapsed = time.monotonic() - started
            flush_started = time.monotonic()
            guard.flush(timeout=1.0)
            flush_elapsed = time.monotonic() - flush_started

        assert outcomes == ["ok:0", "ValueError", "recovers:1", "ValueError", "ok:0"]
        assert elapsed < 15  # the SDK's HTTP timeout is 30 s: nobody waited on it
        assert flush_elapsed < 5
        assert down.requests() >= 1
        # broken twice, recovers once: three events handed to the SDK, none failing the sink
        assert notifications("high", "sent") - before_sent == 3
        assert sample("telemetry_guard_telemetry_errors_total", sink="sentry") == before_errors
        if mode == "ok":
            assert len(down.events()) == 3
    finally:
        down.stop()


class RaisingTransport(HttpTransport):
    """A transport that refuses every envelope at hand-over (a broken SDK set-up)."""

    def capture_envelope(self, envelope: Any) -> None:
        raise OSError("transport refused the envelope")


def test_capture_that_raises_is_counted_failed_and_changes_no_outcome(
        celery_app: Celery, server: SentryServer) -> None:
    """capture_event raising: notifications{outcome=failed}, telemetry_errors{sink=sentry}."""
    sentry_sdk.init(dsn=server.dsn, transport=RaisingTransport, default_integrations=False)
    TelemetryGuard(celery_app)

    @celery_app.task(bind=True, base=GuardedTask, name="t.sentry.refused", severity="high",
                     retry_policy=NO_RETRY, shared=False)
    def refused(self: Any) -> None:
        raise RuntimeError("refused")

    before_failed = notifications("high", "failed")
    before_errors = sample("telemetry_guard_telemetry_errors_total", sink="sentry")
    with capture_logs() as logs, worker(celery_app):
        assert run(refused.delay()) == "RuntimeError"
    assert notifications("high", "failed") - before_failed == 1
    assert sample("telemetry_guard_telemetry_errors_total", sink="sentry") - before_errors == 1
    failed = [e for e in logs if e["event"] == "notification.failed"]
    assert len(failed) == 1 and failed[0]["channel"] == "sentry"
    assert failed[0]["error"] == "OSError" and failed[0]["task_name"] == "t.sentry.refused"
    assert len([e for e in logs if e["event"] == "task.gave_up"]) == 1


def test_sentry_is_off_without_dsn_or_application_client_and_closing_turns_it_off(
        celery_app: Celery, server: SentryServer) -> None:
    """No DSN and no client: no sink. A DSN: a sink and a client, closed with the guard."""
    assert not SentrySink.wanted(None)
    off = TelemetryGuard(celery_app)
    assert not [s for s in off.dispatcher.sinks if s.name == "sentry"]
    on = TelemetryGuard(celery_app, sentry_dsn=server.dsn)
    assert [s for s in on.dispatcher.sinks if s.name == "sentry"]
    assert sentry_sdk.get_client().is_active()
    assert sentry_sdk.get_client().should_send_default_pii() is False
    assert not SentrySink.wanted(None)  # our own client is not the application's
    on.close()
    assert not sentry_sdk.get_client().is_active()


def test_application_client_wins_over_the_dsn_setting(
        celery_app: Celery, server: SentryServer) -> None:
    """App-initialised sentry-sdk and a DSN setting: the app's client is kept, never closed."""
    sentry_sdk.init(dsn=server.dsn, default_integrations=False)
    client = sentry_sdk.get_client()
    with capture_logs() as logs:
        guard = TelemetryGuard(celery_app, sentry_dsn="http://other@127.0.0.1:9/2")
        guard.setup()
    assert sentry_sdk.get_client() is client
    assert [e for e in logs if e["event"] == "sentry.dsn_ignored"]
    assert [s for s in guard.dispatcher.sinks if s.name == "sentry"]
    guard.close()
    assert sentry_sdk.get_client() is client and client.transport is not None
