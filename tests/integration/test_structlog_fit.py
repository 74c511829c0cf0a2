"""structlog as applications set it up: the task's ids in their own lines, the guard's events
intact through structlog-native JSON, stdlib ``ProcessorFormatter`` and ``render_to_log_kwargs``.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from celery import Celery, signals
from celery.contrib.testing.worker import start_worker
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from prometheus_client import REGISTRY

from telemetry_guard import CircuitBreaker, GuardedTask, RetryPolicy, TelemetryGuard
from tests.flaky_task import SECRET, register_flaky
from tests.servers import wait_for
from tests.smtp_server import CapturingSMTPServer

NO_RETRY = RetryPolicy(max_retries=0)
TASK_KEYS = ("task_id", "task_name", "trace_id", "span_id")
#: Attributes every LogRecord has (and ``message``/``asctime``, which formatting adds).
RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class Output:
    """What one logging set-up wrote, read back as one dict per line."""

    def __init__(self, read: Callable[[], list[dict[str, Any]]],
                 text: Callable[[], str]) -> None:
        self.read = read
        self.text = text

    def events(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        """The lines of event ``name`` that have ``fields``."""
        return [line for line in self.read() if line.get("event") == name
                and all(line.get(k) == v for k, v in fields.items())]


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


#: (logger, handler) pairs a set-up attached, detached after the test.
_ATTACHED: list[tuple[logging.Logger, logging.Handler]] = []


def attach(handler: logging.Handler, *names: str) -> None:
    """Add ``handler`` to the loggers ``names`` until the test ends."""
    for name in names:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        _ATTACHED.append((logger, handler))


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """structlog's configuration, its context and the stdlib loggers put back after the test."""
    old_config = structlog.get_config()
    levels = {name: logging.getLogger(name).level for name in ("myapp", "telemetry_guard")}
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()
    structlog.configure(**old_config)
    structlog.contextvars.clear_contextvars()
    while _ATTACHED:
        logger, handler = _ATTACHED.pop()
        logger.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def structlog_native() -> Output:
    """(a) merge_contextvars, add_log_level, JSONRenderer, written by WriteLoggerFactory."""
    stream = io.StringIO()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.JSONRenderer()],
        logger_factory=structlog.WriteLoggerFactory(file=stream))
    return Output(lambda: json_lines(stream), stream.getvalue)


def stdlib_processor_formatter() -> Output:
    """(b) structlog through stdlib logging: a root handler with ProcessorFormatter(JSON)."""
    stream = io.StringIO()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.stdlib.add_log_level,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=structlog.processors.JSONRenderer()))
    attach(handler, "")  # the root logger
    for name in ("myapp", "telemetry_guard"):  # the worker sets the root's level (-l)
        logging.getLogger(name).setLevel(logging.INFO)
    return Output(lambda: json_lines(stream), stream.getvalue)


class RecordingHandler(logging.Handler):
    """Formats every record with a plain Formatter (as a console handler would) and keeps it."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.records.append(record)

    def fields(self) -> list[dict[str, Any]]:
        """Each record as its message (``event``) and the keys the event added."""
        return [{"event": r.getMessage(), "logger": r.name,
                 **{k: v for k, v in r.__dict__.items() if k not in RECORD_ATTRIBUTES}}
                for r in list(self.records)]


def stdlib_render_to_log_kwargs() -> tuple[Output, RecordingHandler]:
    """structlog's keys as ``extra`` of stdlib LogRecords (``render_to_log_kwargs``)."""
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.stdlib.add_log_level,
                    structlog.stdlib.render_to_log_kwargs],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger)
    handler = RecordingHandler()
    attach(handler, "myapp", "telemetry_guard")
    for name in ("myapp", "telemetry_guard"):
        logging.getLogger(name).setLevel(logging.INFO)
    return Output(handler.fields, lambda: "\n".join(handler.lines)), handler


SETUPS = {"structlog_native": structlog_native,
          "stdlib_processor_formatter": stdlib_processor_formatter}


@pytest.fixture(params=sorted(SETUPS))
def output(request: pytest.FixtureRequest, restored_logging: None) -> Output:
    """One of the two JSON set-ups users have, configured for the test."""
    return SETUPS[request.param]()


def hex_ids(span: Any) -> tuple[str, str]:
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def worker(app: Celery, *queues: str) -> Any:
    kwargs: dict[str, Any] = {"queues": list(queues)} if queues else {}
    return start_worker(app, pool="solo", perform_ping_check=False, loglevel="CRITICAL",
                        **kwargs)


def logging_errors() -> float:
    return REGISTRY.get_sample_value("telemetry_guard_telemetry_errors_total",
                                     {"sink": "logging"}) or 0.0


def test_own_lines_carry_the_task_ids_and_the_context_is_restored(
        celery_app: Celery, spans: Any, output: Output,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Own lines in a GuardedTask and a plain task carry the ids; after, the context is back."""
    TelemetryGuard(celery_app)
    log = structlog.get_logger("myapp")

    flaky = register_flaky(celery_app, "fit.flaky", log)

    @celery_app.task(name="fit.plain", shared=False)
    def plain() -> None:
        log.info("importing")
        raise ValueError(f"bad row password={SECRET}")

    @celery_app.task(name="fit.probe", telemetry_guard_observe=False, shared=False)
    def probe(label: str) -> None:
        log.info("probe", label=label)

    @celery_app.task(name="fit.bind_outer", telemetry_guard_observe=False, shared=False)
    def bind_outer() -> None:  # what the worker had bound before the next task
        structlog.contextvars.bind_contextvars(task_id="outer", deployment="blue")

    structlog.contextvars.bind_contextvars(request_id="req-7")
    with worker(celery_app):
        guarded = flaky.delay()
        assert guarded.get(timeout=20) == "ok"
        failing = plain.delay()
        with pytest.raises(ValueError):
            failing.get(timeout=20)
        probe.delay("after tasks").get(timeout=20)
        bind_outer.delay().get(timeout=20)
        again = plain.delay()
        with pytest.raises(ValueError):
            again.get(timeout=20)
        probe.delay("after outer").get(timeout=20)
    log.info("after worker")

    runs = {s.attributes["celery.retries"]: s for s in spans.get_finished_spans()
            if s.name == "run/fit.flaky"}
    charging = output.events("charging")
    assert [line["attempt_no"] for line in charging] == [0, 1]
    for line in charging:
        assert line["task_id"] == guarded.id and line["task_name"] == "fit.flaky"
        assert (line["trace_id"], line["span_id"]) == hex_ids(runs[line["attempt_no"]])

    importing = output.events("importing")
    assert [(line["task_id"], line["task_name"]) for line in importing] == [
        (failing.id, "fit.plain"), (again.id, "fit.plain")]
    assert "trace_id" not in importing[0]  # no span: no instrumentation, not a GuardedTask

    failed = {line["task_id"]: line for line in output.events("task.failed")}
    assert set(failed) == {guarded.id, failing.id, again.id}
    for line in failed.values():
        assert "message" not in line
        assert line["exception_message"].startswith(("db refused", "bad row"))
    assert failed[guarded.id]["trace_id"] == hex_ids(runs[0])[0]
    assert SECRET not in output.text()

    after_tasks, after_outer = output.events("probe")
    assert not set(TASK_KEYS) & set(after_tasks), after_tasks
    assert after_outer["task_id"] == "outer" and after_outer["deployment"] == "blue"
    assert not {"task_name", "trace_id", "span_id"} & set(after_outer), after_outer
    [after_worker] = output.events("after worker")
    assert after_worker["request_id"] == "req-7"
    assert not set(TASK_KEYS) & set(after_worker)
    assert "Logging error" not in capsys.readouterr().err


def test_a_guarded_tasks_ids_stay_bound_through_celerys_success_handling(
        celery_app: Celery, spans: Any, output: Output) -> None:
    """A GuardedTask's run binds its ids; ``on_success`` and ``task_success`` receivers,
    which Celery runs after the run's span ended, still log them; after, nothing is left."""
    TelemetryGuard(celery_app)
    log = structlog.get_logger("myapp")

    class Reporting(GuardedTask):
        def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            log.info("on_success", retval=retval)

    @celery_app.task(name="fit.reporting", base=Reporting, shared=False)
    def reporting() -> str:
        log.info("working")
        return "done"

    @celery_app.task(name="fit.probe_after", telemetry_guard_observe=False, shared=False)
    def probe() -> None:
        log.info("probe")

    def on_task_success(sender: Any = None, **_: Any) -> None:
        if sender is not None and sender.name == "fit.reporting":
            log.info("task_success_receiver")

    signals.task_success.connect(on_task_success, weak=False)
    try:
        with worker(celery_app):
            result = reporting.delay()
            assert result.get(timeout=20) == "done"
            probe.delay().get(timeout=20)
    finally:
        signals.task_success.disconnect(on_task_success)

    [run] = [s for s in spans.get_finished_spans() if s.name == "run/fit.reporting"]
    [working] = output.events("working")
    assert (working["task_id"], working["task_name"]) == (result.id, "fit.reporting")
    assert (working["trace_id"], working["span_id"]) == hex_ids(run)
    for name in ("on_success", "task_success_receiver"):
        [line] = output.events(name)
        assert (line["task_id"], line["task_name"]) == (result.id, "fit.reporting"), line
    [after] = output.events("probe")
    assert not set(TASK_KEYS) & set(after), after


def test_every_guard_event_arrives_as_a_log_record_through_render_to_log_kwargs(
        celery_app: Celery, restored_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    """Guard events as LogRecords with a plain Formatter: none lost, no logging error."""
    output, handler = stdlib_render_to_log_kwargs()
    with CapturingSMTPServer() as smtp:
        guard = TelemetryGuard(celery_app, email=smtp.settings(retry_max_retries=0))
        log = structlog.get_logger("myapp")
        breaker = CircuitBreaker("fit.kwargs.ledger", failure_threshold=1, reset_timeout=60.0,
                                 storage="memory")

        flaky = register_flaky(celery_app, "fit.kw.flaky", log)

        @celery_app.task(base=GuardedTask, name="fit.kw.ledger", severity="critical",
                         shared=False)
        def ledger() -> None:
            raise ValueError(f"ledger mismatch password={SECRET}")

        @celery_app.task(base=GuardedTask, name="fit.kw.breaker", breaker=breaker,
                         retry_policy=NO_RETRY, shared=False)
        def guarded_call() -> None:
            raise ConnectionError("upstream down")

        @celery_app.task(base=GuardedTask, name="fit.kw.other", severity="critical",
                         shared=False)
        def other() -> None:
            raise KeyError("missing account")

        errors = logging_errors()
        with worker(celery_app, "tests", guard.settings.notification_queue):
            assert flaky.delay().get(timeout=20) == "ok"
            with pytest.raises(ValueError):
                ledger.delay().get(timeout=20)
            wait_for(lambda: output.events("notification.sent", channel="email"))
            with pytest.raises(ValueError):
                ledger.delay().get(timeout=20)
            wait_for(lambda: output.events("notification.throttled", channel="email"))
            with pytest.raises(ConnectionError):
                guarded_call.delay().get(timeout=20)
            smtp.stop()
            with pytest.raises(KeyError):
                other.delay().get(timeout=20)
            wait_for(lambda: output.events("notification.failed", channel="email"))

    names = [line["event"] for line in output.read()]
    for name in ("task.failed", "task.retry_scheduled", "task.gave_up", "breaker.state_changed",
                 "notification.sent", "notification.throttled", "notification.failed"):
        assert name in names, (name, names)
    assert names.count("task.failed") == 5 and names.count("task.gave_up") == 4
    assert names.count("charging") == 2
    assert logging_errors() == errors
    assert "Logging error" not in capsys.readouterr().err
    assert {"WARNING telemetry_guard task.failed", "INFO telemetry_guard task.retry_scheduled",
            "ERROR telemetry_guard task.gave_up", "WARNING telemetry_guard breaker.state_changed",
            "INFO myapp charging"} <= set(handler.lines)  # the plain Formatter's lines
    for line in output.events("task.failed"):
        assert line["exception_message"] and SECRET not in line["exception_message"]
        assert line["task_name"].startswith("fit.kw.")
    [change] = output.events("breaker.state_changed")
    assert (change["breaker"], change["from_state"], change["to_state"]) == (
        "fit.kwargs.ledger", "closed", "open")
    assert change["task_name"] == "fit.kw.breaker"  # from the task's structlog context
    [failed] = output.events("notification.failed", channel="email")
    assert failed["task_name"] == "fit.kw.other" and failed["error"] == "ConnectionRefusedError"
    assert SECRET not in output.text()
    charging = output.events("charging")
    assert all(line["task_name"] == "fit.kw.flaky" and line["trace_id"] for line in charging)


def run_instrumented(celery_app: Celery, spans: Any, task: Any,
                     count: int) -> tuple[list[Any], dict[str, Any]]:
    """Run ``task(n)`` for n in 0..count-1 on a worker with opentelemetry-instrumentation-
    celery instrumented: the results, and the instrumentation's span of each by task id."""
    instrumentor = CeleryInstrumentor()
    instrumentor.instrument()
    try:
        with worker(celery_app):
            results = [task.delay(n) for n in range(count)]
            assert [r.get(timeout=20) for r in results] == list(range(count))
    finally:
        instrumentor.uninstrument()
    runs = {s.attributes["messaging.message.id"]: s for s in spans.get_finished_spans()
            if s.name == f"run/{task.name}"}
    assert {s.instrumentation_scope.name for s in runs.values()} == {
        "opentelemetry.instrumentation.celery"}
    return results, runs


def test_instrumentation_span_ids_reach_a_plain_tasks_own_lines(
        celery_app: Celery, spans: Any, output: Output) -> None:
    """opentelemetry-instrumentation-celery instrumented after the guard: from the second task
    on, a plain task's own lines carry the instrumentation span's ids."""
    TelemetryGuard(celery_app)
    log = structlog.get_logger("myapp")

    @celery_app.task(name="fit.instrumented", shared=False)
    def instrumented(n: int) -> int:
        log.info("working", n=n)
        return n

    results, runs = run_instrumented(celery_app, spans, instrumented, 3)
    lines = output.events("working")
    assert [(line["n"], line["task_id"]) for line in lines] == [
        (n, r.id) for n, r in enumerate(results)]
    # The guard's receiver ran before the instrumentation's on the first task (it was
    # connected first); it moves behind it then, so the first line has no span ids.
    assert "trace_id" not in lines[0]
    for line, result in zip(lines[1:], results[1:], strict=True):
        assert (line["trace_id"], line["span_id"]) == hex_ids(runs[result.id])


def test_a_guarded_task_without_its_own_span_logs_the_instrumentations_ids(
        celery_app: Celery, spans: Any, output: Output) -> None:
    """Guard tracing off, opentelemetry-instrumentation-celery on: a GuardedTask's own lines
    carry the instrumentation span's ids, from the first task on (its run binds them, after
    every ``task_prerun`` receiver ran), and its task ids."""
    celery_app.conf.telemetry_guard_tracing = False
    TelemetryGuard(celery_app)
    log = structlog.get_logger("myapp")

    @celery_app.task(name="fit.guarded_instrumented", base=GuardedTask, shared=False)
    def guarded_instrumented(n: int) -> int:
        log.info("working", n=n)
        return n

    results, runs = run_instrumented(celery_app, spans, guarded_instrumented, 2)
    lines = output.events("working")
    assert [(line["n"], line["task_id"], line["task_name"]) for line in lines] == [
        (n, r.id, "fit.guarded_instrumented") for n, r in enumerate(results)]
    for line, result in zip(lines, results, strict=True):
        assert (line["trace_id"], line["span_id"]) == hex_ids(runs[result.id])
