"""Celery's own retry idioms under the guard, plain tasks and GuardedTask, with real workers.

``autoretry_for``, ``retry_backoff``, ``self.retry(...)`` and friends keep exactly their
Celery behaviour; the guard tells one event per failed attempt, for every task of the app.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from telemetry_guard import GuardedTask, RetryPolicy, TelemetryGuard
from telemetry_guard.core.events import FailureEvent
from telemetry_guard.testing import capture_events
from tests.servers import RedisServer, stop_process

ROOT = Path(__file__).resolve().parents[2]
ERRORS = "telemetry_guard:errors"
SEVERITIES = ("low", "medium", "high", "critical")


class ExcludedError(ConnectionError):
    """A connection error the task excludes with ``dont_autoretry_for``."""


def always_connection_error(self: Any) -> None:
    raise ConnectionError("upstream down")


def excluded_error(self: Any) -> None:
    raise ExcludedError("upstream refused for good")


def manual_retry(self: Any) -> None:
    try:
        raise KeyError("order-17")
    except KeyError as exc:
        raise self.retry(exc=exc, countdown=0) from exc


def value_error(self: Any) -> None:
    raise ValueError("malformed order")


AUTORETRY: dict[str, Any] = {"autoretry_for": (ConnectionError,)}
MAX_RETRIES_EXCEEDED = ("give_up", "max_retries_exceeded")
NOT_RETRYABLE = ("give_up", "not_retryable")


@dataclass(frozen=True)
class Idiom:
    """One way of retrying in Celery, and what the guard must tell about it."""

    options: dict[str, Any]
    body: Callable[[Any], None]
    raises: type[BaseException]
    #: (decision, reason) of each attempt, in order.
    decisions: list[tuple[str, str]]
    #: Exact delay of each retry; None when ``delay_cap`` bounds jittered delays instead.
    delays: list[float] | None = None
    delay_cap: float | None = None
    max_retries: int | None = None


RETRY = ("retry", "")

IDIOMS: dict[str, Idiom] = {
    "retry_backoff": Idiom(
        {**AUTORETRY, "max_retries": 2, "retry_backoff": True, "retry_jitter": False},
        always_connection_error, ConnectionError, [RETRY, RETRY, MAX_RETRIES_EXCEEDED],
        delays=[1.0, 2.0], max_retries=2),
    "retry_backoff_max": Idiom(
        {**AUTORETRY, "max_retries": 2, "retry_backoff": True, "retry_backoff_max": 1,
         "retry_jitter": False},
        always_connection_error, ConnectionError, [RETRY, RETRY, MAX_RETRIES_EXCEEDED],
        delays=[1.0, 1.0], max_retries=2),
    "retry_backoff_max_below_factor": Idiom(
        {**AUTORETRY, "max_retries": 2, "retry_backoff": True, "retry_backoff_max": 0,
         "retry_jitter": False},
        always_connection_error, ConnectionError, [RETRY, RETRY, MAX_RETRIES_EXCEEDED],
        delays=[0.0, 0.0], max_retries=2),
    "retry_jitter": Idiom(
        {**AUTORETRY, "max_retries": 2, "retry_backoff": True, "retry_backoff_max": 1,
         "retry_jitter": True},
        always_connection_error, ConnectionError, [RETRY, RETRY, MAX_RETRIES_EXCEEDED],
        delay_cap=1.0, max_retries=2),
    "dont_autoretry_for": Idiom(
        {**AUTORETRY, "dont_autoretry_for": (ExcludedError,), "max_retries": 2,
         "default_retry_delay": 0},
        excluded_error, ExcludedError, [NOT_RETRYABLE], delays=[], max_retries=2),
    "default_retry_delay": Idiom(
        {**AUTORETRY, "max_retries": 2, "default_retry_delay": 0.25},
        always_connection_error, ConnectionError, [RETRY, RETRY, MAX_RETRIES_EXCEEDED],
        delays=[0.25, 0.25], max_retries=2),
    "retry_kwargs": Idiom(
        {**AUTORETRY, "retry_kwargs": {"max_retries": 1, "countdown": 0}},
        always_connection_error, ConnectionError, [RETRY, MAX_RETRIES_EXCEEDED],
        delays=[0.0], max_retries=1),
    "manual_retry": Idiom(
        {"max_retries": 2}, manual_retry, KeyError, [RETRY, RETRY, MAX_RETRIES_EXCEEDED],
        delays=[0.0, 0.0], max_retries=2),
    "plain_failure": Idiom({}, value_error, ValueError, [NOT_RETRYABLE], delays=[]),
}


def idiom_params() -> Iterator[Any]:
    """Every idiom as a plain task and as a GuardedTask."""
    for name in IDIOMS:
        for guarded in (False, True):
            yield pytest.param(name, guarded,
                               id=f"{name}-{'guarded' if guarded else 'plain'}")


def sample(name: str, **labels: str) -> float:
    """A metric's current value in this process (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def counters(task: str, exception: str) -> dict[str, float]:
    """Failures, retries and give-ups of ``task`` so far, over every severity."""
    return {
        "failures": sum(sample("telemetry_guard_task_failures_total", task=task,
                               exception=exception, severity=s) for s in SEVERITIES),
        "retries": sample("telemetry_guard_task_retries_total", task=task, exception=exception),
        "giveups": sum(sample("telemetry_guard_task_giveups_total", task=task,
                              exception=exception, severity=s) for s in SEVERITIES),
    }


def events_of(events: list[Any], task_id: str) -> list[FailureEvent]:
    return [e for e in events if isinstance(e, FailureEvent) and e.task_id == task_id]


def register(app: Celery, name: str, body: Callable[[Any], None], *, guarded: bool,
             runs: list[str] | None = None, **options: Any) -> Any:
    """Register ``body`` as a bound task (``GuardedTask`` or Celery's own base)."""
    if guarded:
        options["base"] = GuardedTask

    def run(self: Any) -> None:
        if runs is not None:
            runs.append(self.request.id)
        body(self)

    run.__name__ = name.rsplit(".", 1)[-1]
    return app.task(bind=True, name=name, shared=False, **options)(run)


@pytest.fixture
def worker(celery_app: Celery) -> Callable[[], Any]:
    """Starts an in-process solo worker consuming the app's queue."""
    def start() -> Any:
        return start_worker(celery_app, pool="solo", perform_ping_check=False,
                            loglevel="WARNING", shutdown_timeout=10)
    return start


class DeclinedError(ConnectionError):
    """Stands for ``tests.apps.plain_tasks.DeclinedError`` (compared by name; importing that
    module here would add its shared tasks to every app this process finalizes)."""


def assert_raises_original(result: Any, exc_type: type[BaseException]) -> None:
    """The task's own outcome: its result raises the exception its body raised."""
    with pytest.raises(Exception) as raised:
        result.get(timeout=30, propagate=True)
    assert type(raised.value).__name__ == exc_type.__name__, repr(raised.value)


# -- 1. every idiom, plain and GuardedTask, in an in-process solo worker ------------------
@pytest.mark.parametrize(("idiom_name", "guarded"), list(idiom_params()))
def test_celery_retry_idiom_gives_one_event_per_attempt(
        celery_app: Celery, worker: Callable[[], Any], idiom_name: str, guarded: bool) -> None:
    """Each attempt is one event with Celery's decision and delay; the outcome is Celery's."""
    idiom = IDIOMS[idiom_name]
    guard = TelemetryGuard(celery_app)
    name = f"idioms.{'guarded' if guarded else 'plain'}.{idiom_name}"
    runs: list[str] = []
    task = register(celery_app, name, idiom.body, guarded=guarded, runs=runs, **idiom.options)
    before = counters(name, idiom.raises.__name__)

    with capture_events() as captured, capture_logs() as logs, worker():
        result = task.delay()
        assert_raises_original(result, idiom.raises)
        guard.flush()

    events = events_of(captured, result.id)
    attempts = len(idiom.decisions)
    assert [(e.decision, e.reason) for e in events] == idiom.decisions
    assert [e.attempt for e in events] == list(range(1, attempts + 1))  # one per attempt
    assert all(e.task_name == name and e.exception_type == idiom.raises.__name__
               for e in events)
    assert all(e.max_retries == idiom.max_retries for e in events if idiom.max_retries)
    delays = [e.delay_s for e in events if e.decision == "retry"]
    if idiom.delays is not None:
        assert delays == pytest.approx(idiom.delays, abs=0.05)
    else:
        assert len(delays) == attempts - 1
        assert all(d is not None and 0.0 <= d <= idiom.delay_cap for d in delays), delays
    assert all(e.delay_s is None for e in events if e.decision == "give_up")
    assert runs == [result.id] * attempts  # the body ran once per attempt, no more

    told = [(e["event"], e["attempt"]) for e in logs
            if e.get("task_id") == result.id and e["event"].startswith("task.")]
    assert told == [(event, attempt)
                    for attempt, (decision, _) in enumerate(idiom.decisions, start=1)
                    for event in ("task.failed", "task.retry_scheduled" if decision == "retry"
                                  else "task.gave_up")]

    after = counters(name, idiom.raises.__name__)
    retries = attempts - 1
    assert {k: after[k] - before[k] for k in after} == {
        "failures": attempts, "retries": retries, "giveups": 1}


def test_give_up_after_celery_retries_is_escalated_in_the_counters(
        celery_app: Celery, worker: Callable[[], Any]) -> None:
    """Plain ``autoretry_for``: a MEDIUM failure and a retry, then a HIGH failure and give-up."""
    guard = TelemetryGuard(celery_app)
    name = "idioms.counted"
    task = register(celery_app, name, always_connection_error, guarded=False,
                    **IDIOMS["retry_kwargs"].options)
    labels = {"task": name, "exception": "ConnectionError"}

    def snapshot() -> dict[str, float]:
        return {
            "failed_medium": sample("telemetry_guard_task_failures_total", **labels,
                                    severity="medium"),
            "failed_high": sample("telemetry_guard_task_failures_total", **labels,
                                  severity="high"),
            "retries": sample("telemetry_guard_task_retries_total", **labels),
            "gave_up_high": sample("telemetry_guard_task_giveups_total", **labels,
                                   severity="high"),
        }

    before = snapshot()
    with worker():
        assert_raises_original(task.delay(), ConnectionError)
        guard.flush()
    after = snapshot()
    assert {k: after[k] - before[k] for k in after} == {
        "failed_medium": 1, "failed_high": 1, "retries": 1, "gave_up_high": 1}


# -- 2. GuardedTask: retry_policy or Celery's retry options, never both -------------------
@pytest.mark.parametrize("option", [
    {"max_retries": 3}, {"autoretry_for": (ConnectionError,)},
    {"dont_autoretry_for": (ExcludedError,)}, {"default_retry_delay": 5},
    {"retry_backoff": True}, {"retry_backoff_max": 60}, {"retry_jitter": False},
    {"retry_kwargs": {"countdown": 1}},
], ids=lambda option: next(iter(option)))
def test_guarded_task_with_retry_policy_and_a_celery_retry_option_is_a_type_error(
        celery_app: Celery, option: dict[str, Any]) -> None:
    """Both at once is ambiguous: the task class is refused when registered, naming it."""
    TelemetryGuard(celery_app)
    with pytest.raises(TypeError) as raised:
        @celery_app.task(base=GuardedTask, name="idioms.ambiguous", lazy=False, shared=False,
                         retry_policy=RetryPolicy(max_retries=1), **option)
        def ambiguous() -> None:
            """Never registered."""
    message = str(raised.value)
    assert "idioms.ambiguous" in message and "retry_policy" in message
    assert next(iter(option)) in message


def test_guarded_task_with_retry_policy_only_keeps_its_policy(
        celery_app: Celery, worker: Callable[[], Any]) -> None:
    """``retry_policy=RetryPolicy(max_retries=4)`` retries 4 times, past Celery's default 3."""
    guard = TelemetryGuard(celery_app)
    policy = RetryPolicy(max_retries=4, base_delay=0.0, max_delay=0.0, jitter="none",
                         retry_on=(ConnectionError,))
    runs: list[str] = []
    task = register(celery_app, "idioms.policy_only", always_connection_error, guarded=True,
                    runs=runs, retry_policy=policy)
    assert guard.policy_for(task) is policy

    with capture_events() as captured, worker():
        result = task.delay()
        assert_raises_original(result, ConnectionError)
        guard.flush()

    events = events_of(captured, result.id)
    assert [(e.attempt, e.decision, e.reason) for e in events] == [
        (1, *RETRY), (2, *RETRY), (3, *RETRY), (4, *RETRY), (5, *MAX_RETRIES_EXCEEDED)]
    assert {e.max_retries for e in events} == {4}
    assert len(runs) == 5


# -- 3. opting out ------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["keyword", "app_conf"])
def test_observe_all_tasks_off_leaves_plain_tasks_alone_but_not_guarded_tasks(
        celery_app: Celery, worker: Callable[[], Any], how: str) -> None:
    """``observe_all_tasks`` off: plain failures give no event; GuardedTask still does."""
    if how == "keyword":
        guard = TelemetryGuard(celery_app, observe_all_tasks=False)
    else:
        guard = TelemetryGuard(celery_app)
        celery_app.conf.telemetry_guard_observe_all_tasks = False
    quick = IDIOMS["retry_kwargs"].options
    plain_retry = register(celery_app, "idioms.off.retry", always_connection_error,
                           guarded=False, **quick)
    plain_manual = register(celery_app, "idioms.off.manual", manual_retry, guarded=False,
                            max_retries=1)
    plain_fail = register(celery_app, "idioms.off.fail", value_error, guarded=False)
    guarded = register(celery_app, "idioms.off.guarded", always_connection_error,
                       guarded=True, **quick)

    with capture_events() as captured, worker():
        sent = [(task.delay(), exc_type) for task, exc_type in (
            (plain_retry, ConnectionError), (plain_manual, KeyError), (plain_fail, ValueError),
            (guarded, ConnectionError))]
        for result, exc_type in sent:
            assert_raises_original(result, exc_type)
        guard.flush()

    assert not guard.settings.observe_all_tasks
    failures = [e for e in captured if isinstance(e, FailureEvent)]
    assert [(e.task_name, e.attempt, e.decision) for e in failures] == [
        ("idioms.off.guarded", 1, "retry"), ("idioms.off.guarded", 2, "give_up")]


def test_task_option_telemetry_guard_observe_false_opts_one_plain_task_out(
        celery_app: Celery, worker: Callable[[], Any]) -> None:
    """``telemetry_guard_observe=False`` on a plain task: no event; its neighbour still has."""
    guard = TelemetryGuard(celery_app)
    quick = IDIOMS["retry_kwargs"].options
    quiet = register(celery_app, "idioms.quiet", always_connection_error, guarded=False,
                     telemetry_guard_observe=False, **quick)
    quiet_fail = register(celery_app, "idioms.quiet_fail", value_error, guarded=False,
                          telemetry_guard_observe=False)
    observed = register(celery_app, "idioms.observed", value_error, guarded=False)

    with capture_events() as captured, worker():
        sent = [(task.delay(), exc_type) for task, exc_type in (
            (quiet, ConnectionError), (quiet_fail, ValueError), (observed, ValueError))]
        for result, exc_type in sent:
            assert_raises_original(result, exc_type)
        guard.flush()

    failures = [e for e in captured if isinstance(e, FailureEvent)]
    assert [(e.task_name, e.decision, e.reason) for e in failures] == [
        ("idioms.observed", *NOT_RETRYABLE)]


# -- 4. a real worker process whose plain tasks never import telemetry_guard ---------------
def test_plain_tasks_module_never_imports_telemetry_guard() -> None:
    """The prefork test's plain tasks are observed only through the app's guard."""
    source = (ROOT / "tests" / "apps" / "plain_tasks.py").read_text()
    assert not re.search(r"^\s*(import|from)\s+telemetry_guard", source, re.MULTILINE)
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported == {"__future__", "typing", "redis", "celery"}


@pytest.fixture
def error_log_url(redis_server: RedisServer, redis_url: str) -> str:
    """Another database of the private server, for the error log only."""
    db = (int(redis_url.rsplit("/", 1)[-1]) + 32) % 64
    redis_server.client(db).flushdb()
    return f"{redis_server.url}/{db}"


@pytest.fixture(params=["solo", "prefork"])
def pool(request: pytest.FixtureRequest) -> str:
    """The worker's pool."""
    return str(request.param)


@pytest.fixture
def observed_worker(pool: str, redis_url: str, error_log_url: str,
                    tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A tests.apps.observed_app worker`` as a subprocess, solo or prefork."""
    concurrency = ["-c", "2"] if pool == "prefork" else []
    env = dict(os.environ, TG_TEST_BROKER=redis_url, TG_TEST_ERROR_LOG=error_log_url,
               PYTHONPATH=str(ROOT))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with (tmp_path / "worker.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.apps.observed_app", "worker",
             "-P", pool, *concurrency, "-Q", "observed", "-l", "WARNING",
             "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            stop_process(proc)
    if proc.returncode not in (0, None):
        print((tmp_path / "worker.log").read_text())


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    app = Celery("producer", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.task_default_queue = "observed"
    yield app
    app.close()


def test_worker_process_records_each_attempt_of_plain_and_guarded_tasks_once(
        observed_worker: subprocess.Popen[bytes], producer: Celery, redis_url: str,
        error_log_url: str, pool: str) -> None:
    """The error log holds exactly one record per failed attempt, from pool or solo worker."""
    expected = {
        "plain.autoretry": (ConnectionError, [RETRY, RETRY, MAX_RETRIES_EXCEEDED]),
        "plain.manual_retry": (KeyError, [RETRY, RETRY, MAX_RETRIES_EXCEEDED]),
        "plain.fail": (ValueError, [NOT_RETRYABLE]),
        "observed.guarded_autoretry": (ConnectionError, [RETRY, MAX_RETRIES_EXCEEDED]),
        "plain.backoff": (ConnectionError, [RETRY, RETRY, MAX_RETRIES_EXCEEDED]),
        "observed.guarded_backoff": (ConnectionError, [RETRY, RETRY, MAX_RETRIES_EXCEEDED]),
        "plain.dont_autoretry": (DeclinedError, [NOT_RETRYABLE]),
        "observed.guarded_dont_autoretry": (DeclinedError, [NOT_RETRYABLE]),
        "plain.retry_kwargs": (ConnectionError, [RETRY, MAX_RETRIES_EXCEEDED]),
        "observed.guarded_retry_kwargs": (ConnectionError, [RETRY, MAX_RETRIES_EXCEEDED]),
        "observed.guarded_manual_retry": (KeyError, [RETRY, RETRY, MAX_RETRIES_EXCEEDED]),
    }
    results = {name: producer.send_task(name) for name in expected}
    for name, result in results.items():
        assert_raises_original(result, expected[name][0])
    broker = redis.Redis.from_url(redis_url)
    for name, result in results.items():
        assert int(broker.get(f"runs:{result.id}") or 0) == len(expected[name][1]), name

    stop_process(observed_worker)  # a warm shutdown flushes every process's buffer
    assert observed_worker.returncode == 0

    records = [json.loads(fields[b"record"])
               for _, fields in redis.Redis.from_url(error_log_url).xrange(ERRORS)]
    assert not redis.Redis.from_url(redis_url).exists(ERRORS)  # the setting was honoured
    by_task = {name: [(r["attempt"], r["decision"], r["reason"], r["exception_type"])
                      for r in sorted(records, key=lambda r: r["attempt"])
                      if r["task_id"] == results[name].id]
               for name in expected}
    assert by_task == {
        name: [(attempt, decision, reason, exc_type.__name__)
               for attempt, (decision, reason) in enumerate(decisions, start=1)]
        for name, (exc_type, decisions) in expected.items()}
    assert len(records) == sum(len(decisions) for _, decisions in expected.values())
    assert {r["task_name"] for r in records} == set(expected)
    recorded_in_main = any(r["pid"] == observed_worker.pid for r in records)
    assert recorded_in_main == (pool == "solo")  # prefork: each child records its own
