"""The Celery-free failure pipeline: the retry decision and the event builder."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from telemetry_guard import RetryPolicy, Severity
from telemetry_guard.core.classify import Classifier
from telemetry_guard.core.pipeline import EventBuilder, decide
from telemetry_guard.core.redact import Redactor
from telemetry_guard.core.routing import Router

POLICY = RetryPolicy(max_retries=2, retry_on=(ConnectionError,), base_delay=1.0, jitter="none")


class RateLimited(ConnectionError):
    retry_after = 30.0


def test_a_retryable_failure_within_the_limit_is_retried_after_the_backoff() -> None:
    decision = decide(POLICY, ConnectionError("down"), 0)
    assert decision.decision == "retry" and decision.reason == ""
    assert decision.delay == POLICY.delay(1)


def test_retry_after_asked_by_the_exception_is_honoured_up_to_max_delay() -> None:
    assert decide(POLICY, RateLimited(), 0).delay == min(30.0, POLICY.max_delay)


@pytest.mark.parametrize(("exc", "retries", "reason"), [
    (ConnectionError("down"), 2, "max_retries_exceeded"),
    (ValueError("bad"), 0, "not_retryable"),
])
def test_give_up_reasons(exc: BaseException, retries: int, reason: str) -> None:
    assert decide(POLICY, exc, retries) == ("give_up", reason, None)


def test_the_budget_is_asked_only_when_the_policy_allows_a_retry() -> None:
    asked: list[int] = []

    def empty_budget() -> bool:
        asked.append(1)
        return False

    assert decide(POLICY, ValueError(), 0, budget_allows=empty_budget).reason == "not_retryable"
    assert asked == []
    assert decide(POLICY, ConnectionError(), 0, budget_allows=empty_budget) == (
        "give_up", "retry_budget_exhausted", None)
    assert asked == [1]


def test_a_retry_the_task_asked_for_past_its_limit_gives_up() -> None:
    assert decide(POLICY, ConnectionError(), 0, retries_used_up=True).reason == (
        "max_retries_exceeded")


def builder(*, dead_letters: bool = True) -> EventBuilder:
    redactor = Redactor(keys=("password",), max_value_chars=50, max_record_bytes=4096)
    return EventBuilder(classifier=Classifier(), router=Router({}), redactor=redactor,
                        traceback_redactor=redactor, keeps_dead_letters=dead_letters,
                        trace_ids=lambda: ("a" * 32, "b" * 16))


def test_the_event_is_redacted_routed_and_carries_the_replay_of_a_give_up() -> None:
    task = SimpleNamespace(name="billing.charge", severity=None, throws=(), routes=None)
    request = SimpleNamespace(id="t-1", retries=2, hostname="w@h",
                              delivery_info={"routing_key": "billing", "priority": 3})
    try:
        raise ConnectionError("password=hunter2 refused")
    except ConnectionError as exc:
        event = builder().build(task, exc, args=("card",), kwargs={"password": "hunter2"},
                                request=request, decision="give_up",
                                reason="max_retries_exceeded", max_retries=2)
    assert event.attempt == 3 and event.queue == "billing" and event.hostname == "w@h"
    assert event.severity is Severity.HIGH  # MEDIUM, escalated by the give-up reason
    assert "hunter2" not in event.message and "hunter2" not in event.traceback
    assert event.kwargs == {"password": "[REDACTED]"}
    assert (event.trace_id, event.span_id) == ("a" * 32, "b" * 16)
    assert event.replay is not None and event.replay["kwargs"] == {"password": "hunter2"}
    assert event.replay["options"]["queue"] == "billing"


def test_no_replay_without_a_dead_letter_store_or_on_a_retry() -> None:
    task = SimpleNamespace(name="t", severity="critical", throws=(KeyError,), routes=None)
    request = SimpleNamespace(id="t-2", retries=0)
    kept = builder().build(task, KeyError("k"), args=(), kwargs={}, request=request,
                           decision="retry", delay=1.0)
    assert kept.replay is None and kept.expected and kept.severity is Severity.CRITICAL
    assert builder(dead_letters=False).build(task, KeyError("k"), args=(), kwargs={},
                                             request=request, decision="give_up").replay is None
