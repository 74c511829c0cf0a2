"""Workflow context end to end: chains, retries, chords and fallbacks on a real worker.

One in-process solo worker consumes a private Redis broker; Sentry is a local endpoint,
e-mail a local SMTP server, spans the in-memory exporter, the error log the real Redis
stream read back through ``telemetry-guard errors list --root``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import celery.app.trace as celery_trace
import celery.worker.consumer.consumer as celery_consumer
import pytest
import sentry_sdk
from celery import Celery, chain, chord
from celery.contrib.testing.worker import start_worker
from celery.exceptions import ChordError
from celery.result import AsyncResult
from click.testing import CliRunner
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from telemetry_guard import GuardedTask, RetryPolicy, TelemetryGuard
from telemetry_guard.cli import celery_guard
from tests.sentry_server import SentryServer
from tests.smtp_server import CapturingSMTPServer

NO_RETRY = RetryPolicy(max_retries=0)
ONE_RETRY = RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.05,
                        retry_on=(ConnectionError,))
BROKEN = "telemetry_guard_workflows_broken_total"


def broken(root_task: str | None = None) -> float:
    """``workflows_broken_total`` for one root task, or summed over all of them."""
    if root_task is not None:
        return REGISTRY.get_sample_value(BROKEN, {"root_task": root_task}) or 0.0
    return sum(s.value for m in REGISTRY.collect() for s in m.samples if s.name == BROKEN)


def reset_sentry() -> None:
    sentry_sdk.get_client().close(timeout=2.0)
    sentry_sdk.get_global_scope().set_client(None)
    sentry_sdk.get_global_scope().clear_breadcrumbs()


@pytest.fixture(autouse=True)
def sentry_off(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """sentry-sdk is process-global: each test starts and ends with no client (and the
    worker builds its tracers through the function sentry-sdk patches)."""
    monkeypatch.setattr(celery_consumer, "build_tracer",
                        lambda *args, **kwargs: celery_trace.build_tracer(*args, **kwargs))
    reset_sentry()
    yield
    reset_sentry()


def worker(app: Celery, *queues: str) -> Any:
    return start_worker(app, pool="solo", perform_ping_check=False, loglevel="CRITICAL",
                        shutdown_timeout=10, queues=list(queues or ("tests",)))


def error_records(app: Celery, *argv: str) -> list[dict[str, Any]]:
    """``telemetry-guard --json errors list ...`` against the app's Redis, parsed."""
    result = CliRunner().invoke(celery_guard, ["--json", "errors", "list", *argv],
                                obj=SimpleNamespace(app=app))
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.strip()]


def chain_tasks(app: Celery, prefix: str, *, severity: str = "critical") -> SimpleNamespace:
    """``start`` (the first step), ``step`` (adds one) and ``breaks`` (not retryable)."""

    @app.task(bind=True, base=GuardedTask, name=f"{prefix}.start", shared=False)
    def start(self: Any, x: int) -> int:
        return x + 1

    @app.task(bind=True, base=GuardedTask, name=f"{prefix}.step", shared=False)
    def step(self: Any, x: int) -> int:
        return x + 1

    @app.task(bind=True, base=GuardedTask, name=f"{prefix}.breaks", severity=severity,
              retry_policy=NO_RETRY, shared=False)
    def breaks(self: Any, x: int, password: str = "canary-pw") -> int:
        raise ValueError(f"ledger mismatch at {x} password={password}")

    return SimpleNamespace(start=start, step=step, breaks=breaks)


def test_chain_of_five_whose_third_gives_up_is_a_broken_workflow_in_every_sink(
        celery_app: Celery, spans: Any) -> None:
    """start | step | breaks | step | step: the third step's give-up names its workflow,
    position and the two steps it dropped, in the error log, metrics, logs, Sentry, the
    span, the mail and ``errors list --root``."""
    server = SentryServer("ok")
    with CapturingSMTPServer() as smtp:
        guard = TelemetryGuard(celery_app, sentry_dsn=server.dsn, email=smtp.settings())
        t = chain_tasks(celery_app, "t.wf")
        o = chain_tasks(celery_app, "t.other", severity="low")
        ids = [f"wf-step-{i}-{id(celery_app)}" for i in range(1, 6)]
        sigs = [t.start.s(1), t.step.s(), t.breaks.s(), t.step.s(), t.step.s()]
        before = broken("t.wf.start")
        with capture_logs() as logs, worker(celery_app, "tests",
                                            guard.settings.notification_queue):
            other = chain(o.start.s(10), o.breaks.s()).apply_async()  # another workflow
            with pytest.raises(ValueError):
                other.get(timeout=20)
            chain(*(s.set(task_id=i) for s, i in zip(sigs, ids, strict=True))).apply_async()
            with pytest.raises(ValueError):
                AsyncResult(ids[2], app=celery_app).get(timeout=20)
            mails = smtp.wait_for(1)
            guard.flush()
    server.stop()

    # The error log, read back by the CLI: this workflow's record only.
    [record] = error_records(celery_app, "--root", ids[0])
    assert record["task_id"] == ids[2] and record["task_name"] == "t.wf.breaks"
    assert record["root_id"] == ids[0] and record["parent_id"] == ids[1]
    assert record["root_task"] == "t.wf.start"
    assert (record["chain_position"], record["chain_length"]) == (3, 5)
    assert record["steps_dropped"] == 2 and record["decision"] == "give_up"
    assert "canary-pw" not in json.dumps(record)
    everything = error_records(celery_app)
    assert len(everything) == 2
    assert {r["root_id"] for r in everything} == {ids[0], other.parent.id}

    # Metrics: one broken workflow, by its first task's name.
    assert broken("t.wf.start") - before == 1

    # Logs.
    [gave_up] = [e for e in logs if e["event"] == "task.gave_up" and e["task_id"] == ids[2]]
    assert gave_up["root_id"] == ids[0] and gave_up["parent_id"] == ids[1]
    assert gave_up["steps_dropped"] == 2 and gave_up["chain_position"] == 3
    [failed] = [e for e in logs if e["event"] == "task.failed" and e["task_id"] == ids[2]]
    assert failed["root_id"] == ids[0]
    [broke] = [e for e in logs if e["event"] == "workflow.broken" and e["root_id"] == ids[0]]
    assert broke["root_task"] == "t.wf.start" and broke["steps_dropped"] == 2
    assert broke["task_name"] == "t.wf.breaks"

    # Sentry.
    [event] = [e for e in server.events() if e["tags"].get("root_id") == ids[0]]
    assert event["tags"]["chain_position"] == "3" and event["tags"]["parent_id"] == ids[1]
    assert event["tags"]["task_name"] == "t.wf.breaks"

    # The span: attributes, and a link to the second step's span.
    finished = spans.get_finished_spans()
    [second] = [s for s in finished if s.attributes.get("celery.task_id") == ids[1]]
    [third] = [s for s in finished if s.attributes.get("celery.task_id") == ids[2]]
    assert third.attributes["telemetry_guard.root_id"] == ids[0]
    assert third.attributes["telemetry_guard.parent_id"] == ids[1]
    assert third.attributes["telemetry_guard.chain_position"] == 3
    assert [link.context.span_id for link in third.links] == [second.context.span_id]
    assert not [s for s in finished if s.attributes.get("celery.task_id") in ids[3:]]

    # The mail about the third step says which workflow broke, where, and what it dropped.
    [mail] = [m for m in mails if ids[2] in m.body]
    assert ids[0] in mail.body and "t.wf.start" in mail.body
    assert "3 of 5" in mail.body and "2 step(s)" in mail.body


def test_a_retry_span_links_to_the_previous_attempt(celery_app: Celery, spans: Any) -> None:
    """Each attempt's span links to the span of the attempt before, which scheduled it."""
    TelemetryGuard(celery_app)
    calls = {"n": 0}

    @celery_app.task(bind=True, base=GuardedTask, name="t.wf.flaky", shared=False,
                     retry_policy=RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.05,
                                              retry_on=(ConnectionError,)))
    def flaky(self: Any) -> str:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("reset")
        return "ok"

    with worker(celery_app):
        result = flaky.delay()
        assert result.get(timeout=20) == "ok"
    attempts = sorted((s for s in spans.get_finished_spans()
                       if s.attributes.get("celery.task_id") == result.id),
                      key=lambda s: s.attributes["celery.retries"])
    assert [s.attributes["celery.retries"] for s in attempts] == [0, 1, 2]
    assert list(attempts[0].links) == []
    for earlier, later in zip(attempts[:-1], attempts[1:], strict=True):
        assert [link.context.span_id for link in later.links] == [earlier.context.span_id]
        assert later.links[0].context.trace_id == earlier.context.trace_id


def test_a_chord_member_giving_up_fails_the_callback_with_an_event_naming_it(
        celery_app: Celery) -> None:
    """The callback's ChordError is a give-up event that names the failed member; the
    workflow counts as broken once."""
    guard = TelemetryGuard(celery_app)

    @celery_app.task(bind=True, base=GuardedTask, name="t.chord.ok", shared=False)
    def ok(self: Any, x: int) -> int:
        return x

    @celery_app.task(bind=True, base=GuardedTask, name="t.chord.member", severity="high",
                     retry_policy=NO_RETRY, shared=False)
    def member(self: Any, x: int, token: str = "canary-tok") -> int:
        raise KeyError(f"no rate for {x} token={token}")

    @celery_app.task(bind=True, base=GuardedTask, name="t.chord.total", shared=False)
    def total(self: Any, values: list[int]) -> int:
        return sum(values)

    before = broken()
    with capture_logs() as logs, worker(celery_app):
        result = chord([ok.s(1), member.s(2).set(task_id="chord-member-failing")],
                       total.s()).apply_async()
        with pytest.raises(ChordError, match="chord-member-failing"):  # Celery's own
            result.get(timeout=20, follow_parents=False)
        guard.flush()

    records = {r["task_id"]: r for r in error_records(celery_app)}
    failed_member = records["chord-member-failing"]
    assert failed_member["chord_id"] == result.id and failed_member["steps_dropped"] == 1
    callback = records[result.id]
    assert callback["task_name"] == "t.chord.total"
    assert callback["exception_type"] == "ChordError"
    assert callback["decision"] == "give_up" and callback["reason"] == "chord_member_failed"
    assert "t.chord.member" in callback["message"]
    assert "chord-member-failing" in callback["message"] and "KeyError" in callback["message"]
    assert "canary-tok" not in json.dumps(callback)
    assert callback["root_id"] == failed_member["root_id"]
    assert callback["group_id"] == failed_member["group_id"] is not None
    assert callback["steps_dropped"] == 0
    assert broken() - before == 1
    assert len([e for e in logs if e["event"] == "workflow.broken"]) == 1


def test_a_give_up_with_a_fallback_drops_nothing(celery_app: Celery) -> None:
    """A chain step that falls back after its retries: the chain goes on, nothing is
    dropped or counted broken, and the step keeps its chain position across the retry."""
    guard = TelemetryGuard(celery_app)
    t = chain_tasks(celery_app, "t.fb")

    @celery_app.task(bind=True, base=GuardedTask, name="t.fb.cached", retry_policy=ONE_RETRY,
                     fallback=lambda x: 100, shared=False)
    def cached(self: Any, x: int) -> int:
        raise ConnectionError("rates service down")

    before = broken()
    with capture_logs() as logs, worker(celery_app):
        result = chain(t.start.s(1), cached.s(), t.step.s()).apply_async()
        assert result.get(timeout=20) == 101
        guard.flush()

    records = sorted((r for r in error_records(celery_app) if r["task_name"] == "t.fb.cached"),
                     key=lambda r: r["attempt"])
    assert [(r["decision"], r["chain_position"], r["chain_length"]) for r in records] == [
        ("retry", 2, 3), ("give_up", 2, 3)]
    assert [r["steps_dropped"] for r in records] == [0, 0]
    assert broken() == before
    assert not [e for e in logs if e["event"] == "workflow.broken"]
