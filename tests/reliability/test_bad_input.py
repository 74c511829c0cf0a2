"""Bad input: hostile arguments and exceptions never make a sink raise or write junk.

Hypothesis draws nested args and kwargs (bytes, sets, cycles, huge strings and ints, NaN,
lone surrogates, objects whose ``__repr__`` raises, returns a non-string or a megabyte)
and exceptions (``__str__`` that raises or returns a non-string, unpicklable ones, a
``__cause__`` or ``__context__`` cycle, a 10,000-frame traceback, a class with a hostile
name). Each failure is built once with ``guard.events.build`` (as ``GuardedTask`` does)
and handed to each sink directly, so that an exception escaping a sink fails the test
instead of being swallowed by the dispatcher:

- ``LogSink`` with structlog rendering JSON (``configure_logging``): every line parses,
  ``message`` and ``traceback`` are within their bounds;
- ``MetricsSink`` on a fresh registry: the exposition parses back, the ``exception`` label
  is the class's name (or ``other``);
- ``TracingSink`` with an active span of the in-memory exporter: the ``exception`` event's
  attributes are bounded strings;
- ``ErrorLogSink`` on the private Redis: flushed and read back, each record parses and is
  at most ``max_record_bytes``; a give-up's dead letter has a ``replay`` field that parses.

Then the exceptions go through a real ``task.apply()`` (eager, ``TelemetryGuard(app,
redis_url=None)``): the task's outcome is the exception itself or its stand-in, reported
exactly once, and nothing else escapes. The quick profile runs in ``make test``; the full
one (``-m slow``) draws many more examples.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import structlog
from celery import Celery
from celery.app.task import Context
from celery.utils.serialization import UnpickleableExceptionWrapper
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from telemetry_guard import (
    GuardedTask,
    RetryPolicy,
    TelemetryGuard,
    UnpicklableTaskError,
    configure_logging,
)
from telemetry_guard.core.events import FailureEvent
from telemetry_guard.core.redact import TRUNCATED_MARKER
from telemetry_guard.sinks.errorlog import ErrorLogSink
from telemetry_guard.sinks.logging import LogSink
from telemetry_guard.sinks.metrics import Metrics, MetricsSink
from telemetry_guard.sinks.tracing import TracingSink
from telemetry_guard.testing import capture_events

MAX_VALUE_CHARS = 2048  # the default telemetry_guard_max_value_chars
MAX_RECORD_BYTES = 32768  # the default telemetry_guard_max_record_bytes
#: The longest truncation marker (``…[truncated N chars]``) a bounded text can end with.
MARKER = len(TRUNCATED_MARKER.format(n=10**12))
MAX_MESSAGE = MAX_VALUE_CHARS + MARKER
MAX_TRACEBACK = 4 * MAX_VALUE_CHARS + MARKER
DEEP = 10_000

#: ``make test``: few examples, and one bug shrunk and reported per test (shrinking is slow).
QUICK = settings(max_examples=25, deadline=None, database=None, report_multiple_bugs=False,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow, HealthCheck.data_too_large])
FULL = settings(QUICK, max_examples=400, report_multiple_bugs=True)


# -- hostile values --------------------------------------------------------------------
class Printable:
    """How Hypothesis shows a falsifying example (it would call the hostile ``repr``)."""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"<{type(self).__name__}>")


class ReprRaises(Printable):
    """``repr()`` raises."""

    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")

    def __hash__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReprRaises)


class ReprNotString(Printable):
    """``repr()`` returns an int (TypeError)."""

    def __repr__(self) -> Any:
        return 42


class ReprHuge(Printable):
    """``repr()`` returns a megabyte."""

    def __repr__(self) -> str:
        return "R" * 1_000_000


class ComparesBadly(Printable):
    """Hashable, but ordering and equality raise (sets of these cannot be sorted)."""

    def __lt__(self, other: object) -> bool:
        raise TypeError("no order")

    def __hash__(self) -> int:
        return id(self)


class ItemsRaise(Printable, dict):  # type: ignore[type-arg]
    """A dict whose ``items()`` raises."""

    def items(self) -> Any:
        raise RuntimeError("items exploded")


def cyclic_list(value: Any) -> list[Any]:
    cycle: list[Any] = [value]
    cycle.append(cycle)
    return cycle


def cyclic_dict(value: Any) -> dict[str, Any]:
    cycle: dict[str, Any] = {"value": value}
    cycle["self"] = {"parent": cycle}
    return cycle


huge_text = st.integers(MAX_VALUE_CHARS, 300_000).map(lambda n: "x" * n)
hashables = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                      st.binary(max_size=20), st.builds(ReprRaises), st.builds(ComparesBadly))
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(2**300, 2**4000),
    st.floats(allow_nan=True, allow_infinity=True), st.text(), huge_text,
    st.binary(), st.integers(MAX_VALUE_CHARS, 100_000).map(lambda n: b"\xff" * n),
    st.sampled_from(["\ud800", "x\udcff" * 100, "\x00\r\n\u2028", "{\"a\": 1}"]),
    st.builds(ReprRaises), st.builds(ReprNotString), st.builds(ReprHuge),
    st.builds(ComparesBadly), st.builds(object),
)
keys = st.one_of(st.text(max_size=30), st.integers(), st.none(), st.tuples(st.integers()),
                 st.builds(ReprRaises), huge_text)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.tuples(children, children),
        st.dictionaries(keys, children, max_size=5), st.sets(hashables, max_size=5),
        st.frozensets(hashables, max_size=5), st.builds(cyclic_list, children),
        st.builds(cyclic_dict, children), st.builds(ItemsRaise),
        st.integers(101, 3000).map(lambda n: list(range(n))),
    ),
    max_leaves=12,
)
task_args = st.lists(values, max_size=4).map(tuple)
task_kwargs = st.dictionaries(st.text(max_size=20), values, max_size=4)


# -- hostile exceptions ----------------------------------------------------------------
class StrRaises(Printable, Exception):
    def __str__(self) -> str:
        raise RuntimeError("str exploded")


class StrAndReprRaise(Printable, Exception):
    def __str__(self) -> str:
        raise RuntimeError("str exploded")

    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


class StrNotString(Printable, Exception):
    def __str__(self) -> Any:
        return None


class HoldsALock(Printable, Exception):
    """Cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class NeedsTwoArguments(Printable, Exception):
    """Pickles, but cannot be unpickled (its constructor wants two arguments)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class ReduceRaises(Printable, Exception):
    def __reduce__(self) -> Any:
        raise TypeError("not today")


def hostile_class(name: str, module: str) -> type[Exception]:
    cls = type(name, (Printable, Exception), {})
    cls.__module__ = module
    return cls


def make_exception(kind: str, message: str, name: str, module: str) -> Exception:
    if kind == "plain":
        return ValueError(message)
    if kind == "str_raises":
        return StrRaises(message)
    if kind == "str_and_repr_raise":
        return StrAndReprRaise(message)
    if kind == "str_not_string":
        return StrNotString(message)
    if kind == "lock":
        return HoldsALock(message)
    if kind == "two_arguments":
        return NeedsTwoArguments(message, 7)
    if kind == "reduce_raises":
        return ReduceRaises(message)
    if kind == "arg_repr_raises":
        return ValueError(ReprRaises(), message)
    if kind == "arg_str_raises":
        return KeyError(StrAndReprRaise(message))
    return hostile_class(name, module)(message)


def raise_from_depth(exc: BaseException, depth: int) -> None:
    if depth <= 0:
        raise exc
    raise_from_depth(exc, depth - 1)


def with_traceback(exc: BaseException, depth: int) -> BaseException:
    """``exc`` after being raised ``depth`` frames deep (its ``__traceback__`` set)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, depth + 2000))
    try:
        raise_from_depth(exc, depth)
    except BaseException:  # noqa: S110 - we only want its traceback
        pass
    finally:
        sys.setrecursionlimit(limit)
    return exc


def chain(exc: Exception, link: str, other: Exception) -> Exception:
    """Link ``exc`` to ``other`` (and, for cycles, back) by ``__cause__``/``__context__``."""
    if link == "cause":
        exc.__cause__ = other
    elif link == "context":
        exc.__context__ = other
    elif link == "cause_cycle":
        exc.__cause__, other.__cause__ = other, exc
    elif link == "context_cycle":
        exc.__context__, other.__context__ = other, exc
    elif link == "self_cause":
        exc.__cause__ = exc
    return exc


KINDS = ["plain", "str_raises", "str_and_repr_raise", "str_not_string", "lock", "two_arguments",
         "reduce_raises", "arg_repr_raises", "arg_str_raises", "hostile_class"]
messages = st.one_of(st.text(), huge_text,
                     st.sampled_from(["\ud800 lone", "line\r\nBcc: x@evil", "%s %(x)s {0}"]))
class_names = st.text(min_size=1, max_size=80).filter(lambda s: "\x00" not in s)
one_exception = st.builds(make_exception, st.sampled_from(KINDS), messages, class_names,
                          st.text(max_size=40).filter(lambda s: "\x00" not in s))
exceptions = st.builds(
    chain, one_exception,
    st.sampled_from(["none", "cause", "context", "cause_cycle", "context_cycle", "self_cause"]),
    one_exception)
depths = st.sampled_from([0, 0, 3, DEEP])
decisions = st.sampled_from(["retry", "give_up"])


# -- fixtures --------------------------------------------------------------------------
@pytest.fixture
def guard(celery_app: Celery, redis_url: str) -> TelemetryGuard:
    """A guard whose Redis is set (so give-ups carry replay data); its sinks are not used."""
    return TelemetryGuard(celery_app, redis_url=redis_url)


@pytest.fixture
def task(celery_app: Celery, guard: TelemetryGuard) -> GuardedTask:
    @celery_app.task(bind=True, base=GuardedTask, name="bad.input", shared=False)
    def bad_input(self: GuardedTask, *args: Any, **kwargs: Any) -> None:
        """Never run here: the sink tests only need its name and options."""

    return bad_input  # type: ignore[no-any-return]


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(stream)
    yield stream
    structlog.reset_defaults()


def failure_event(guard: TelemetryGuard, task: GuardedTask, exc: BaseException, args: Any,
                  kwargs: Any, decision: str) -> FailureEvent:
    request = Context(id=str(uuid.uuid4()), retries=1, hostname="bad@input",
                      delivery_info={"routing_key": "bad", "exchange": "", "priority": 0})
    return guard.events.build(task, exc, args=args, kwargs=kwargs, request=request,
                              decision=decision,  # type: ignore[arg-type]
                              delay=1.0 if decision == "retry" else None,
                              reason="" if decision == "retry" else "not_retryable",
                              max_retries=3)


def assert_event_bounded(event: FailureEvent) -> None:
    assert isinstance(event.message, str) and len(event.message) <= MAX_MESSAGE
    assert isinstance(event.traceback, str) and len(event.traceback) <= MAX_TRACEBACK
    json.dumps(event.as_record(), allow_nan=False)  # strict JSON, no exception


# -- the sinks, one by one --------------------------------------------------------------
def check_log_sink(guard: TelemetryGuard, task: GuardedTask, json_log: io.StringIO,
                   args: Any, kwargs: Any, exc: BaseException, depth: int,
                   decision: str) -> None:
    event = failure_event(guard, task, with_traceback(exc, depth), args, kwargs, decision)
    assert_event_bounded(event)
    json_log.seek(0)
    json_log.truncate()
    LogSink().on_failure(event)
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert [line["event"] for line in lines] == [
        "task.failed", "task.retry_scheduled" if decision == "retry" else "task.gave_up"]
    assert len(lines[0]["exception_message"]) <= MAX_MESSAGE
    assert len(lines[0]["traceback"]) <= MAX_TRACEBACK
    assert lines[0]["exception_type"] == type(exc).__name__


@QUICK
@given(args=task_args, kwargs=task_kwargs, exc=exceptions, depth=depths, decision=decisions)
def test_log_sink_writes_one_bounded_json_line_per_fact(
        guard: TelemetryGuard, task: GuardedTask, json_log: io.StringIO, args: Any,
        kwargs: Any, exc: Exception, depth: int, decision: str) -> None:
    """LogSink: task.failed + retry/give-up, each a JSON line, message and traceback bounded."""
    check_log_sink(guard, task, json_log, args, kwargs, exc, depth, decision)


@pytest.mark.slow
@FULL
@given(args=task_args, kwargs=task_kwargs, exc=exceptions, depth=depths, decision=decisions)
def test_log_sink_writes_one_bounded_json_line_per_fact_full(
        guard: TelemetryGuard, task: GuardedTask, json_log: io.StringIO, args: Any,
        kwargs: Any, exc: Exception, depth: int, decision: str) -> None:
    """LogSink, full profile."""
    check_log_sink(guard, task, json_log, args, kwargs, exc, depth, decision)


def check_metrics_sink(guard: TelemetryGuard, task: GuardedTask, exc: BaseException,
                       depth: int, decision: str) -> None:
    registry = CollectorRegistry()
    sink = MetricsSink(Metrics(registry=registry), max_label_values=500)
    event = failure_event(guard, task, with_traceback(exc, depth), (), {}, decision)
    sink.on_failure(event)
    samples = [s for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples if s.name == "telemetry_guard_task_failures_total"]
    assert [(s.labels["task"], s.labels["exception"], s.value) for s in samples] == [
        ("bad.input", type(exc).__name__, 1.0)]  # a fresh bound: never ``other`` here


@QUICK
@given(exc=exceptions, depth=depths, decision=decisions)
def test_metrics_sink_exports_parsable_series_for_any_exception(
        guard: TelemetryGuard, task: GuardedTask, exc: Exception, depth: int,
        decision: str) -> None:
    """MetricsSink: one failure counted under the class's name; the exposition parses back."""
    check_metrics_sink(guard, task, exc, depth, decision)


def check_tracing_sink(guard: TelemetryGuard, task: GuardedTask, spans: InMemorySpanExporter,
                       args: Any, kwargs: Any, exc: BaseException, depth: int,
                       decision: str) -> None:
    spans.clear()
    tracer = trace.get_tracer("tests.reliability.bad_input")
    with tracer.start_as_current_span("run/bad.input"):
        event = failure_event(guard, task, with_traceback(exc, depth), args, kwargs, decision)
        TracingSink().on_failure(event)
    [span] = spans.get_finished_spans()
    [exception] = [e for e in span.events if e.name == "exception"]
    attributes = dict(exception.attributes or {})
    assert attributes["exception.type"] == type(exc).__name__
    assert len(str(attributes["exception.message"])) <= MAX_MESSAGE
    assert len(str(attributes["exception.stacktrace"])) <= MAX_TRACEBACK
    for span_event in span.events:
        for value in (span_event.attributes or {}).values():
            assert isinstance(value, (str, int, float, bool))
    assert event.trace_id == format(span.context.trace_id, "032x")


@QUICK
@given(args=task_args, kwargs=task_kwargs, exc=exceptions, depth=depths, decision=decisions)
def test_tracing_sink_records_a_bounded_exception_event_on_the_active_span(
        guard: TelemetryGuard, task: GuardedTask, spans: InMemorySpanExporter, args: Any,
        kwargs: Any, exc: Exception, depth: int, decision: str) -> None:
    """TracingSink: an exception event of bounded strings on the span, status ERROR."""
    check_tracing_sink(guard, task, spans, args, kwargs, exc, depth, decision)


@pytest.fixture
def error_log(guard: TelemetryGuard, redis_url: str) -> Iterator[tuple[ErrorLogSink, list[Any]]]:
    """An ErrorLogSink on the private Redis (own key prefix), and the errors it reported."""
    reported: list[Any] = []
    sink = ErrorLogSink(redis_url, key_prefix=f"bad-{uuid.uuid4().hex[:8]}:", maxlen=100_000,
                        redactor=guard.redactor,
                        report_error=lambda name, exc: reported.append((name, exc)))
    yield sink, reported
    sink.close()


def check_error_log_sink(guard: TelemetryGuard, task: GuardedTask,
                         error_log: tuple[ErrorLogSink, list[Any]], redis_url: str, args: Any,
                         kwargs: Any, exc: BaseException, depth: int, decision: str) -> None:
    sink, reported = error_log
    client = redis.Redis.from_url(redis_url)
    event = failure_event(guard, task, with_traceback(exc, depth), args, kwargs, decision)
    sink.on_failure(event)
    sink.flush(5.0)
    assert reported == []
    [(_, fields)] = client.xrevrange(sink.errors_key, count=1)
    raw = fields[b"record"]
    assert len(raw) <= MAX_RECORD_BYTES
    record = json.loads(raw)
    assert record["task_id"] == event.task_id
    if decision == "give_up":
        [(_, dead)] = client.xrevrange(sink.dead_key, count=1)
        assert dead[b"record"] == raw
        replay = json.loads(dead[b"replay"])
        assert replay["task"] == "bad.input" and replay["id"] == event.task_id


@QUICK
@given(args=task_args, kwargs=task_kwargs, exc=exceptions, depth=depths, decision=decisions)
def test_error_log_sink_stores_a_bounded_json_record_for_any_input(
        guard: TelemetryGuard, task: GuardedTask, error_log: tuple[ErrorLogSink, list[Any]],
        redis_url: str, args: Any, kwargs: Any, exc: Exception, depth: int,
        decision: str) -> None:
    """ErrorLogSink: record ≤ max_record_bytes and JSON; a give-up's replay field parses."""
    check_error_log_sink(guard, task, error_log, redis_url, args, kwargs, exc, depth, decision)


@pytest.mark.slow
@FULL
@given(args=task_args, kwargs=task_kwargs, exc=exceptions, depth=depths, decision=decisions)
def test_error_log_sink_stores_a_bounded_json_record_for_any_input_full(
        guard: TelemetryGuard, task: GuardedTask, error_log: tuple[ErrorLogSink, list[Any]],
        redis_url: str, args: Any, kwargs: Any, exc: Exception, depth: int,
        decision: str) -> None:
    """ErrorLogSink, full profile."""
    check_error_log_sink(guard, task, error_log, redis_url, args, kwargs, exc, depth, decision)


@pytest.mark.parametrize("hostile", [ReprRaises(), {"nested": [ReprRaises()]}],
                         ids=["repr_raises", "nested_repr_raises"])
def test_a_give_up_whose_argument_cannot_be_printed_still_reaches_the_error_log(
        guard: TelemetryGuard, task: GuardedTask, error_log: tuple[ErrorLogSink, list[Any]],
        redis_url: str, hostile: Any) -> None:
    """An argument whose repr raises: the errors record and a (non-replayable) dead letter."""
    sink, reported = error_log
    event = failure_event(guard, task, ValueError("boom"), (hostile,), {}, "give_up")
    sink.on_failure(event)  # must not raise: the record is written, the replay marked
    sink.flush(5.0)
    client = redis.Redis.from_url(redis_url)
    assert client.xlen(sink.errors_key) == 1 and client.xlen(sink.dead_key) == 1
    assert reported == []


# -- through a real task ---------------------------------------------------------------
@pytest.fixture
def eager_app(celery_app: Celery) -> Celery:
    """The app with a guard that has no Redis: log, metrics and tracing sinks only."""
    TelemetryGuard(celery_app, redis_url=None)
    return celery_app


def make_raising_task(app: Celery, policy: RetryPolicy) -> tuple[Any, dict[str, Any]]:
    plan: dict[str, Any] = {}

    @app.task(bind=True, base=GuardedTask, name=f"bad.raise.{uuid.uuid4().hex[:6]}",
              shared=False, retry_policy=policy)
    def raise_it(self: GuardedTask, *args: Any, **kwargs: Any) -> None:
        raise_from_depth(plan["exc"], plan["depth"])

    return raise_it, plan


def stand_in_for(outcome: BaseException, exc: BaseException) -> bool:
    """Whether ``outcome`` stands in for ``exc``: ours, or Celery's (an unpicklable result)."""
    if isinstance(outcome, UnpicklableTaskError):
        return outcome.type_name == type(exc).__name__
    if isinstance(outcome, UnpickleableExceptionWrapper):
        return bool(outcome.exc_cls_name == type(exc).__name__)
    return False


def check_apply(app: Celery, args: Any, kwargs: Any, exc: Exception, depth: int,
                retries: int) -> None:
    policy = RetryPolicy(max_retries=retries, base_delay=0.0, max_delay=0.0, jitter="none",
                         retry_on=(Exception,))
    task, plan = make_raising_task(app, policy)
    plan.update(exc=exc, depth=depth)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, depth + 3000))
    try:
        with capture_events() as events:
            result = task.apply(args=args, kwargs=kwargs)
    finally:
        sys.setrecursionlimit(limit)
    assert result.state == "FAILURE"
    outcome = result.result
    assert outcome is exc or stand_in_for(outcome, exc), repr(outcome)
    failures = [e for e in events if isinstance(e, FailureEvent)]
    assert [e.decision for e in failures] == ["retry"] * retries + ["give_up"]
    for event in failures:
        assert_event_bounded(event)
        assert event.exception_type == type(exc).__name__


@QUICK
@given(args=task_args, kwargs=task_kwargs, exc=exceptions, depth=depths,
       retries=st.sampled_from([0, 0, 1]))
def test_a_guarded_task_fails_with_its_own_exception_whatever_it_raises(
        eager_app: Celery, args: Any, kwargs: Any, exc: Exception, depth: int,
        retries: int) -> None:
    """task.apply(): FAILURE with the exception (or its stand-in), reported once per attempt."""
    check_apply(eager_app, args, kwargs, exc, depth, retries)


@pytest.mark.slow
@FULL
@given(args=task_args, kwargs=task_kwargs, exc=exceptions, depth=depths,
       retries=st.sampled_from([0, 0, 1]))
def test_a_guarded_task_fails_with_its_own_exception_whatever_it_raises_full(
        eager_app: Celery, args: Any, kwargs: Any, exc: Exception, depth: int,
        retries: int) -> None:
    """task.apply(), full profile."""
    check_apply(eager_app, args, kwargs, exc, depth, retries)




# -- every hostile thing at once, always (whatever Hypothesis draws) -------------------
def kitchen_sink() -> tuple[tuple[Any, ...], dict[str, Any], Exception]:
    """Fresh hostile args, kwargs and exception: each of the kinds above at least once."""
    args = (cyclic_list(ReprNotString()), cyclic_dict(b"\xff" * 5000), {1, "a", None},
            frozenset({ComparesBadly(), ComparesBadly()}), 2**5000, float("nan"), "x" * 300_000,
            "\ud800", list(range(5000)), ReprHuge(), ItemsRaise(a=1))
    kwargs = {"password": "p", "nested": {"deeper": [[[[[[[[[["bottom"]]]]]]]]]]},
              "keys": {("tuple", "key"): 1, None: 2, ReprRaises(): 3}, "huge": "y" * 100_000}
    exc = chain(StrAndReprRaise("m"), "cause_cycle", HoldsALock("lock " * 10_000))
    exc.__context__ = hostile_class("Bad\"Name\n{}", "mod\x01ule")(StrNotString())
    return args, kwargs, with_traceback(exc, DEEP)


@pytest.mark.parametrize("decision", ["retry", "give_up"])
def test_the_kitchen_sink_of_hostile_input_through_log_metrics_and_tracing(
        guard: TelemetryGuard, task: GuardedTask, json_log: io.StringIO,
        spans: InMemorySpanExporter, decision: str) -> None:
    """Every hostile kind at once: log, metrics and tracing sinks stay valid and bounded."""
    args, kwargs, exc = kitchen_sink()
    check_log_sink(guard, task, json_log, args, kwargs, exc, 0, decision)
    check_metrics_sink(guard, task, exc, 0, decision)
    check_tracing_sink(guard, task, spans, args, kwargs, exc, 0, decision)


def test_the_kitchen_sink_of_hostile_input_through_the_error_log(
        guard: TelemetryGuard, task: GuardedTask, error_log: tuple[ErrorLogSink, list[Any]],
        redis_url: str) -> None:
    """Every hostile kind at once (a retry: no replay): one bounded JSON record."""
    args, kwargs, exc = kitchen_sink()
    check_error_log_sink(guard, task, error_log, redis_url, args, kwargs, exc, 0, "retry")


def test_the_kitchen_sink_of_hostile_input_through_a_real_task(eager_app: Celery) -> None:
    """Every hostile kind at once through task.apply(): one retry, one give-up, no escape."""
    args, kwargs, exc = kitchen_sink()
    check_apply(eager_app, args, kwargs, exc, DEEP, 1)
