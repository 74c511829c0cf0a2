"""The fault matrix: every fault against the same mixed workload, with and without it.

For each fault the workload of :mod:`tests.reliability.workload` (21 tasks: successes,
retries, give-ups, a breaker trip, two CRITICAL failures mailed) runs on a real worker with
real servers, one of them broken for real: a stopped redis-server, a restarted broker, a
stopped SMTP server, a Sentry endpoint answering 500 or never, a span exporter that raises,
a metrics directory that cannot exist. Each test asserts, against the run without the
fault: the same outcome and attempt count for every task; each CRITICAL mail delivered
exactly once after the fault clears; the fault counted under the right ``sink`` of
``telemetry_guard_telemetry_errors_total`` (or, where the fault is no sink's, nothing
counted); a worker still running tasks. Each records one row of the matrix that
``conftest.py`` prints at the end of the session.


"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import sentry_sdk
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.exceptions import CPendingDeprecationWarning
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from telemetry_guard import GuardedTask, TelemetryGuard
from telemetry_guard.sinks.metrics import get_metrics
from tests.reliability import workload
from tests.reliability.matrix import MatrixRow, record
from tests.reliability.workload import HARD_LIMIT, SOFT_LIMIT, Counters, Job
from tests.sentry_server import SentryServer
from tests.servers import RedisServer, free_port, wait_for
from tests.smtp_server import CapturingSMTPServer

ROOT = Path(__file__).resolve().parents[2]
#: Notification retries fast enough for tests (full jitter below 0.5 s), and many of them.
FAST_NOTIFY = {"retry_base_delay": 0.1, "retry_max_delay": 0.5, "retry_max_retries": 200}
#: Seconds between two mails of one fingerprint (every CRITICAL failure has its own).
THROTTLE = 1.0
#: After the expected mails arrived, wait this long for a duplicate: longer than the
#: throttle window and any notification retry delay.
SETTLE = 2.0
#: How long a cleared fault may take to let every notification through.
MAIL_TIMEOUT = 30.0
#: Celery's publish retries (the workload's own retries, the test's sends) outlast a
#: broker restart of a few seconds.
PUBLISH_RETRY_POLICY = {"max_retries": 60, "interval_start": 0.1, "interval_step": 0.2,
                        "interval_max": 0.5}
#: How long the broker and the error-log Redis stay down when restarted mid-run.
OUTAGE = 2.0
#: The SMTP server comes back this long after it went down.
SMTP_OUTAGE = 5.0
OUTCOME_TIMEOUT = 60.0


@pytest.fixture(autouse=True)
def sentry_off() -> Iterator[None]:
    """sentry-sdk is process-global: each fault starts and ends with no client."""
    reset_sentry()
    yield
    reset_sentry()


def reset_sentry() -> None:
    sentry_sdk.get_client().close(timeout=2.0)
    sentry_sdk.get_global_scope().set_client(None)


# -- observing one run ------------------------------------------------------------------
def telemetry_errors() -> dict[str, float]:
    """``telemetry_guard_telemetry_errors_total`` of this process, by ``sink``."""
    values: dict[str, float] = {}
    for family in get_metrics().telemetry_errors.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                values[sample.labels["sink"]] = sample.value
    return values


def increase(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """The sinks whose error count went up, and by how much."""
    grown = {sink: int(value - before.get(sink, 0.0)) for sink, value in after.items()}
    return {sink: n for sink, n in sorted(grown.items()) if n > 0}


def describe(errors: dict[str, int]) -> str:
    return ", ".join(f"sink={sink} +{n}" for sink, n in errors.items()) or "none"


def wait_mails(smtp: CapturingSMTPServer, prefix: str,
               timeout: float = MAIL_TIMEOUT) -> Counter[str]:
    """Mails of this run by subject, once all expected arrived (or time ran out) and settled."""
    wanted = workload.critical_subjects(prefix)

    def subjects() -> Counter[str]:
        return Counter(str(m.message["Subject"]).strip() for m in list(smtp.messages)
                       if str(m.message["Subject"]).strip().startswith(f"[CRITICAL] {prefix}."))

    deadline = time.monotonic() + timeout
    while not wanted <= set(subjects()) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(SETTLE)
    return subjects()


def delivered(mails: Counter[str], prefix: str) -> str:
    """The matrix cell: how many CRITICAL mails arrived exactly once."""
    wanted = workload.critical_subjects(prefix)
    once = sum(1 for subject in wanted if mails[subject] == 1)
    doubled = sum(1 for subject in wanted if mails[subject] > 1)
    text = f"{once}/{len(wanted)} mails, once each" if once == len(wanted) else (
        f"{once}/{len(wanted)} mails")
    return text + (f", {doubled} doubled" if doubled else "")


def all_once(mails: Counter[str], prefix: str) -> bool:
    wanted = workload.critical_subjects(prefix)
    return {s: mails[s] for s in wanted} == dict.fromkeys(wanted, 1) and set(mails) == wanted


@dataclass
class Run:
    """What one run of the workload did."""

    prefix: str
    outcomes: list[tuple[str, Any, int]]
    mails: Counter[str]
    errors: dict[str, int]
    alive: bool
    logs: list[dict[str, Any]] = field(default_factory=list)


# -- an in-process solo worker ----------------------------------------------------------
@dataclass
class Stack:
    """One app with the workload's tasks and a guard, ready for a solo worker."""

    app: Celery
    guard: TelemetryGuard
    prefix: str
    queue: str
    counters: Counters


@contextmanager
def stack(name: str, *, stable_url: str, smtp: CapturingSMTPServer, broker_url: str | None = None,
          errorlog_url: str | None = None, sentry_dsn: str | None = None) -> Iterator[Stack]:
    """An app whose broker, results and counters live in ``stable_url`` unless told otherwise.

    ``errorlog_url`` is the guard's ``redis_url`` (error log, dead letters, throttles,
    breakers). Task names, queues and Redis keys carry a prefix unique to this run.
    """
    prefix = f"rel.{name}.{uuid.uuid4().hex[:6]}"
    queue = f"{prefix}.tasks"
    app = Celery(prefix, broker=broker_url or stable_url, backend=stable_url,
                 set_as_current=False)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_default_queue=queue,
        result_expires=300,
        worker_prefetch_multiplier=1,
        broker_transport_options={"queue_order_strategy": "priority"},
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
    )
    workload.register(app, prefix, stable_url)
    guard = TelemetryGuard(
        app, redis_url=errorlog_url or stable_url, key_prefix=f"{prefix}:",
        email=smtp.settings(**FAST_NOTIFY), notification_throttle=THROTTLE,
        notification_queue=f"{prefix}.notifications", sentry_dsn=sentry_dsn)
    try:
        yield Stack(app, guard, prefix, queue, Counters(stable_url, prefix))
    finally:
        guard.close()
        app.close()
        gc.collect()  # drop AsyncResults while their backend can still be reached


def probe(app: Celery, prefix: str, queue: str) -> bool:
    """Whether the worker still runs tasks: one more success, within 30 s."""
    try:
        result = app.send_task(f"{prefix}.ok", args=("alive",), queue=queue)
        return bool(workload.outcome(result, 30.0) == "ok")
    except Exception:
        return False


def run_solo(s: Stack, smtp: CapturingSMTPServer, *,
             during: Callable[[Counters], None] | None = None,
             clear: Callable[[], None] | None = None) -> Run:
    """The workload on an in-process solo worker; ``clear`` ends the fault before mails count."""
    before = telemetry_errors()
    with capture_logs() as logs, start_worker(
            s.app, pool="solo", perform_ping_check=False, loglevel="WARNING",
            shutdown_timeout=10, queues=[s.guard.settings.notification_queue, s.queue]):
        outcomes = workload.run(s.app, s.prefix, s.queue, s.counters, during=during)
        if clear is not None:
            clear()
        mails = wait_mails(smtp, s.prefix)
        alive = probe(s.app, s.prefix, s.queue)
        s.guard.flush(timeout=2.0)
    return Run(s.prefix, outcomes, mails, increase(before, telemetry_errors()), alive,
               list(logs))


# -- shared servers and the run without a fault -----------------------------------------
@pytest.fixture(scope="module")
def stable_url(redis_server: RedisServer) -> str:
    """The Redis no fault touches here: results, counters, and the broker unless told."""
    return f"{redis_server.url}/0"


@pytest.fixture(scope="module")
def baseline(stable_url: str) -> Run:
    """The workload on a solo worker with nothing broken."""
    with CapturingSMTPServer() as smtp, stack("baseline", stable_url=stable_url,
                                              smtp=smtp) as s:
        return run_solo(s, smtp)


@pytest.fixture
def smtp() -> Iterator[CapturingSMTPServer]:
    with CapturingSMTPServer() as server:
        yield server


def test_workload_without_a_fault_has_the_expected_outcomes_mails_and_no_errors(
        baseline: Run) -> None:
    """No fault: every task ends as designed, each CRITICAL failure is mailed once, no errors."""
    record(MatrixRow("none (solo worker baseline)",
                     baseline.outcomes == workload.expected(),
                     delivered(baseline.mails, baseline.prefix), describe(baseline.errors),
                     baseline.alive))
    assert baseline.outcomes == workload.expected()
    assert all_once(baseline.mails, baseline.prefix), baseline.mails
    assert baseline.errors == {}
    assert baseline.alive


# -- the faults (a representative subset runs in `make test`) ----------------------------
def test_error_log_redis_down_changes_no_outcome_and_every_mail_goes_out_when_it_is_back(
        baseline: Run, stable_url: str, smtp: CapturingSMTPServer,
        private_redis: Callable[..., RedisServer]) -> None:
    """The guard's Redis stopped for the whole run: same outcomes, errorlog counted, mails and
    error-log records delivered once it is back."""
    server = private_redis()
    server.stop()
    with stack("errorlog_down", stable_url=stable_url, smtp=smtp,
               errorlog_url=f"{server.url}/0") as s:
        run = run_solo(s, smtp, clear=server.restart)
        client = server.client(0)

        def records() -> int:
            return int(client.xlen(f"{s.prefix}:errors"))

        try:
            wait_for(lambda: records() >= workload.FAILED_ATTEMPTS, timeout=15)
        except AssertionError:
            pass
        buffered = records()
    record(MatrixRow("error-log Redis down", run.outcomes == baseline.outcomes,
                     delivered(run.mails, run.prefix),
                     describe(run.errors) + f"; error log {buffered}/"
                     f"{workload.FAILED_ATTEMPTS} records once back", run.alive))
    assert run.outcomes == baseline.outcomes
    assert all_once(run.mails, run.prefix), run.mails
    assert run.errors.get("errorlog", 0) > 0, run.errors
    assert run.alive
    assert buffered == workload.FAILED_ATTEMPTS


def test_raising_span_exporter_changes_no_outcome_and_is_counted(
        baseline: Run, stable_url: str, smtp: CapturingSMTPServer,
        failing_span_exporter: Any) -> None:
    """Every span export raises: same outcomes and mails, sink=span_exporter counted."""
    with stack("span_exporter", stable_url=stable_url, smtp=smtp) as s:
        run = run_solo(s, smtp)
    record(MatrixRow("span exporter raising", run.outcomes == baseline.outcomes,
                     delivered(run.mails, run.prefix), describe(run.errors), run.alive))
    assert run.outcomes == baseline.outcomes
    assert all_once(run.mails, run.prefix), run.mails
    assert run.errors.get("span_exporter", 0) > 0, run.errors
    assert run.alive


def test_smtp_down_then_up_delivers_every_mail_once_by_retrying(
        baseline: Run, stable_url: str) -> None:
    """SMTP stopped, back 5 s later on the same port: same outcomes, each mail exactly once.

    SMTP is reached by the notification task, not by a sink: its outage is retried and
    logged (``notification.retry_scheduled``), and no sink's error count moves.
    """
    smtp = CapturingSMTPServer(free_port())
    smtp.start()
    smtp.stop()
    back = threading.Timer(SMTP_OUTAGE, smtp.start)
    try:
        with stack("smtp_down", stable_url=stable_url, smtp=smtp) as s:
            back.start()
            run = run_solo(s, smtp, clear=back.join)
    finally:
        back.cancel()
        smtp.stop()
    retries = [e for e in run.logs if e["event"] == "notification.retry_scheduled"]
    record(MatrixRow("SMTP down, up 5 s later", run.outcomes == baseline.outcomes,
                     delivered(run.mails, run.prefix),
                     f"{describe(run.errors)} (not a sink: {len(retries)} notification "
                     "retries logged)", run.alive))
    assert run.outcomes == baseline.outcomes
    assert all_once(run.mails, run.prefix), run.mails
    assert retries and {e["error"] for e in retries} == {"ConnectionRefusedError"}
    assert not [e for e in run.logs if e["event"] == "notification.failed"]
    assert run.errors == {}
    assert run.alive


@pytest.mark.slow
def test_error_log_redis_restarting_mid_run_changes_no_outcome_and_loses_no_mail(
        baseline: Run, stable_url: str, smtp: CapturingSMTPServer,
        private_redis: Callable[..., RedisServer]) -> None:
    """The guard's Redis stopped after the breaker's calls, restarted 2 s later: same outcomes,
    errorlog counted, every mail once."""
    server = private_redis()
    back = threading.Timer(OUTAGE, server.restart)

    def stop_mid_run(counters: Counters) -> None:
        counters.wait_paused()
        server.stop()
        counters.release()
        back.start()

    try:
        with stack("errorlog_restart", stable_url=stable_url, smtp=smtp,
                   errorlog_url=f"{server.url}/0") as s:
            run = run_solo(s, smtp, during=stop_mid_run, clear=back.join)
    finally:
        back.cancel()
    record(MatrixRow("error-log Redis restarting mid-run", run.outcomes == baseline.outcomes,
                     delivered(run.mails, run.prefix), describe(run.errors), run.alive))
    assert run.outcomes == baseline.outcomes
    assert all_once(run.mails, run.prefix), run.mails
    assert run.errors.get("errorlog", 0) > 0, run.errors
    assert run.alive


#: Celery warns on every broker connection loss that its default will change in 6.0.
QUIET_RECONNECT = pytest.mark.filterwarnings(
    "ignore::celery.exceptions.CPendingDeprecationWarning")


@pytest.mark.slow
@QUIET_RECONNECT
def test_broker_restarting_mid_run_worker_reconnects_and_changes_no_outcome(
        baseline: Run, stable_url: str, smtp: CapturingSMTPServer,
        private_redis: Callable[..., RedisServer]) -> None:
    """The broker (its own redis-server, persistent) stopped while the worker runs a task,
    back 2 s later: the worker reconnects and finishes the same workload the same way."""
    broker = private_redis(persistent=True)

    def restart_broker(counters: Counters) -> None:
        counters.wait_paused()  # the worker is inside a task that touches no sink
        broker.stop()
        time.sleep(OUTAGE)
        broker.restart()
        counters.release()

    with stack("broker_restart", stable_url=stable_url, smtp=smtp,
               broker_url=f"{broker.url}/0") as s:
        run = run_solo(s, smtp, during=restart_broker)
    record(MatrixRow("broker dropped and restored", run.outcomes == baseline.outcomes,
                     delivered(run.mails, run.prefix),
                     f"{describe(run.errors)} (no sink used the broker while it was down)",
                     run.alive))
    assert run.outcomes == baseline.outcomes
    assert all_once(run.mails, run.prefix), run.mails
    assert run.errors == {}
    assert run.alive


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["error", "hang"])
def test_sentry_answering_500_or_timing_out_changes_no_outcome_and_no_mail(
        baseline: Run, stable_url: str, smtp: CapturingSMTPServer, mode: Any) -> None:
    """Sentry answering 500, or never: same outcomes, every mail once, the SDK did try.

    The Sentry sink hands events to sentry-sdk, which sends them from its own thread: an
    endpoint failing is invisible to the sink (counted ``outcome="sent"``), so no sink's
    error count moves, and the events of the outage are dropped by the SDK.
    """
    server = SentryServer(mode)
    try:
        with stack(f"sentry_{mode}", stable_url=stable_url, smtp=smtp,
                   sentry_dsn=server.dsn) as s:
            started = time.monotonic()

            def clear() -> None:
                server.mode = "ok"

            run = run_solo(s, smtp, clear=clear)
            elapsed = time.monotonic() - started
            requests = server.requests()
    finally:
        server.stop()
    record(MatrixRow(f"Sentry {'answering 500' if mode == 'error' else 'timing out'}",
                     run.outcomes == baseline.outcomes, delivered(run.mails, run.prefix)
                     + f"; Sentry: {requests} post(s) failed, dropped",
                     f"{describe(run.errors)} (SDK sends asynchronously: counted as sent)",
                     run.alive))
    assert run.outcomes == baseline.outcomes
    assert all_once(run.mails, run.prefix), run.mails
    assert requests >= 1
    assert run.errors == {}
    assert run.alive
    assert elapsed < 60  # nobody waited on the SDK's 30 s HTTP timeout per event


# -- a CRITICAL failure while the broker is down ------------------------------------------
@dataclass
class OutageFailure:
    outcome: tuple[str, Any, int]
    mails: Counter[str]
    errors: dict[str, int]
    alive: bool
    subject: str


@pytest.fixture(scope="module")
def critical_during_broker_outage(
        stable_url: str, private_redis: Callable[..., RedisServer]) -> OutageFailure:
    """A CRITICAL task that fails while the broker is down; the broker is back 2 s later."""
    broker = private_redis(persistent=True)
    with CapturingSMTPServer() as smtp, stack(
            "broker_down_critical", stable_url=stable_url, smtp=smtp,
            broker_url=f"{broker.url}/0") as s:
        counters = s.counters

        @s.app.task(bind=True, base=GuardedTask, name=f"{s.prefix}.critical_in_outage",
                    severity="critical", shared=False)
        def critical_in_outage(self: GuardedTask, key: str) -> None:
            counters.attempt(key)
            counters.pause()
            raise RuntimeError("ledger does not balance")

        subject = f"[CRITICAL] {s.prefix}.critical_in_outage: RuntimeError"
        before = telemetry_errors()
        with warnings.catch_warnings(), start_worker(
                s.app, pool="solo", perform_ping_check=False, loglevel="WARNING",
                shutdown_timeout=10, queues=[s.guard.settings.notification_queue, s.queue]):
            warnings.simplefilter("ignore", CPendingDeprecationWarning)  # see QUIET_RECONNECT
            result = critical_in_outage.apply_async(args=("critical",), queue=s.queue)
            counters.wait_paused()
            broker.stop()
            counters.release()  # the task fails now, with the broker down
            value = workload.outcome(result, OUTCOME_TIMEOUT)
            time.sleep(OUTAGE)
            broker.restart()
            deadline = time.monotonic() + 10
            while (not any(str(m.message["Subject"]).strip() == subject
                           for m in list(smtp.messages))
                   and time.monotonic() < deadline):
                time.sleep(0.1)
            time.sleep(SETTLE)
            mails = Counter(str(m.message["Subject"]).strip() for m in list(smtp.messages))
            alive = probe(s.app, s.prefix, s.queue)
        return OutageFailure(("critical", value, counters.attempts("critical")), mails,
                             increase(before, telemetry_errors()), alive, subject)


@pytest.mark.slow
@QUIET_RECONNECT
def test_critical_failure_during_broker_outage_keeps_its_outcome_and_is_counted(
        critical_during_broker_outage: OutageFailure) -> None:
    """The broker down when a CRITICAL task fails: the task fails as it would, the e-mail
    sink's failed publish is counted (sink=email), and the worker carries on."""
    run = critical_during_broker_outage
    record(MatrixRow("broker down during a CRITICAL failure",
                     run.outcome == ("critical", "RuntimeError", 1),
                     f"{run.mails[run.subject]}/1 mails"
                     + (" (LOST)" if run.mails[run.subject] == 0 else ""),
                     describe(run.errors), run.alive))
    assert run.outcome == ("critical", "RuntimeError", 1)
    assert run.errors.get("email", 0) >= 1, run.errors
    assert run.alive


@pytest.mark.slow
def test_critical_failure_during_broker_outage_is_mailed_once_the_broker_is_back(
        critical_during_broker_outage: OutageFailure) -> None:
    """The CRITICAL failure's mail goes out once the broker is back (none lost)."""
    run = critical_during_broker_outage
    assert run.mails[run.subject] == 1


# -- a prefork worker subprocess: metrics directory, worker loss, soft time limit ---------
#: The child is killed first, before it buffered anything: a SIGKILL also takes the error-log
#: records a child has not written yet (they are sent every 0.1 s, off the task's thread).
PREFORK_JOBS = [Job("killed_once", "killed"), *workload.JOBS, Job("soft_limit", "soft")]
PREFORK_EXPECTED = [("killed_once", "ran again", 2), *workload.expected(),
                    ("soft_limit", "SoftTimeLimitExceeded", 1)]


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
    """Every sample of the worker's /metrics, or None when nothing answers there."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                      timeout=5).read().decode()
    except OSError:
        return None
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class PreforkRun:
    """A prefork worker's run of the workload, and what could be seen of it."""

    run: Run
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float] | None
    records: list[dict[str, Any]]
    log: str
    started: dict[str, float]

    def json_log(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log.splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events


def run_prefork(name: str, tmp: Path, stable_url: str, multiproc_dir: Path) -> PreforkRun:
    """The workload, a child killed mid-task and a soft time limit on ``-P prefork -c 1``.

    One child, so that the breaker's calls run in order as on the solo worker.
    """
    prefix = f"rel.{name}.{uuid.uuid4().hex[:6]}"
    queue = f"{prefix}.tasks"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_GUARD_")}
    with CapturingSMTPServer() as smtp:
        env.update(
            TG_REL_BROKER=stable_url, TG_REL_COUNTERS=stable_url, TG_REL_PREFIX=prefix,
            PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir), PYTHONPATH=str(ROOT),
            TELEMETRY_GUARD_METRICS_PORT=str(port), TELEMETRY_GUARD_REDIS_URL=stable_url,
            TELEMETRY_GUARD_KEY_PREFIX=f"{prefix}:",
            TELEMETRY_GUARD_EMAIL=json.dumps(smtp.settings(**FAST_NOTIFY)),
            TELEMETRY_GUARD_NOTIFICATION_THROTTLE=str(THROTTLE),
            TELEMETRY_GUARD_NOTIFICATION_QUEUE=f"{prefix}.notifications")
        log_path = tmp / f"{name}.log"
        producer = Celery("producer", broker=stable_url, backend=stable_url,
                          set_as_current=False)
        counters = Counters(stable_url, prefix)
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tests.reliability.worker_app", "worker",
                 "-P", "prefork", "-c", "1", "-Q", f"{prefix}.notifications,{queue}",
                 "-l", "WARNING", "--without-heartbeat", "--without-gossip",
                 "--without-mingle"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            assert probe(producer, prefix, queue), "the prefork worker did not start"
            counters.release()
            results = workload.submit(producer, prefix, queue, PREFORK_JOBS)
            pid = int(wait_for(lambda: counters.get("pid:killed"), timeout=OUTCOME_TIMEOUT))
            os.kill(pid, signal.SIGKILL)
            outcomes = workload.collect(counters, PREFORK_JOBS, results, OUTCOME_TIMEOUT)
            mails = wait_mails(smtp, prefix)
            alive = proc.poll() is None and probe(producer, prefix, queue)
            metrics = scrape(port)
            records = [json.loads(fields[b"record"]) for _, fields in
                       redis.Redis.from_url(stable_url).xrange(f"{prefix}:errors")]
            started = {"soft": float(counters.get("started:soft") or 0)}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            producer.close()
            gc.collect()
    errors = {}
    if metrics is not None:
        errors = {dict(labels)["sink"]: int(value) for (metric, labels), value in metrics.items()
                  if metric == "telemetry_guard_telemetry_errors_total" and value > 0}
    return PreforkRun(Run(prefix, outcomes, mails, errors, alive), metrics, records,
                      log_path.read_text(errors="replace"), started)


@pytest.fixture(scope="module")
def prefork_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prefork")


@pytest.fixture(scope="module")
def prefork_healthy(prefork_tmp: Path, stable_url: str) -> PreforkRun:
    """The prefork run with a writable ``PROMETHEUS_MULTIPROC_DIR``."""
    multiproc = prefork_tmp / "prom"
    multiproc.mkdir()
    return run_prefork("prefork_ok", prefork_tmp, stable_url, multiproc)


@pytest.fixture(scope="module")
def prefork_metrics_unwritable(prefork_tmp: Path, stable_url: str) -> PreforkRun:
    """The prefork run with a ``PROMETHEUS_MULTIPROC_DIR`` no process can create or write.

    The tests run as root, and root writes into a ``chmod 0o500`` directory
    (CAP_DAC_OVERRIDE) as into any other. A path *under a regular file* fails for every
    user: ``mkdir`` and ``open(..., O_CREAT)`` there give ENOTDIR, root or not.
    """
    blocker = prefork_tmp / "file"
    blocker.write_text("a regular file, so that no directory can exist under it\n")
    return run_prefork("prefork_metrics_dir", prefork_tmp, stable_url, blocker / "prom")


def records_of(run: PreforkRun, task: str) -> list[dict[str, Any]]:
    return [r for r in run.records if r["task_name"] == f"{run.run.prefix}.{task}"]


def log_events(run: PreforkRun, event: str, task: str) -> list[dict[str, Any]]:
    """The worker's JSON log events named ``event`` about ``<prefix>.<task>``."""
    return [e for e in run.json_log() if e.get("event") == event
            and e.get("task_name") == f"{run.run.prefix}.{task}"]


def assert_worker_loss_and_soft_limit(run: PreforkRun) -> None:
    """Worker loss: one HIGH WorkerLostError retry, then success. Soft limit: HIGH at once."""
    [lost] = records_of(run, "killed_once")
    assert (lost["exception_type"], lost["severity"], lost["decision"], lost["reason"]) == (
        "WorkerLostError", "high", "retry", "worker_lost")
    assert [(e["exception_type"], e["severity"]) for e in
            log_events(run, "task.failed", "killed_once")] == [("WorkerLostError", "high")]
    [soft] = log_events(run, "task.gave_up", "soft_limit")
    assert (soft["exception_type"], soft["severity"]) == ("SoftTimeLimitExceeded", "high")
    logged_at = dt.datetime.fromisoformat(soft["timestamp"].replace("Z", "+00:00")).timestamp()
    after = logged_at - run.started["soft"]
    assert SOFT_LIMIT * 0.9 <= after < HARD_LIMIT / 2, after
    # One failure, at the soft limit: the hard limit never fired (no TimeLimitExceeded).
    assert [e["exception_type"] for e in log_events(run, "task.failed", "soft_limit")] == [
        "SoftTimeLimitExceeded"]


@pytest.mark.slow
def test_prefork_worker_loss_and_soft_time_limit_are_high_events_recorded_once(
        prefork_healthy: PreforkRun) -> None:
    """A child SIGKILLed mid-task (acks_late, retry_on_worker_lost) is one HIGH WorkerLostError
    retry and runs again to success; a soft time limit is a HIGH event long before the hard
    one. Everything else ends as on the solo worker."""
    run = prefork_healthy
    record(MatrixRow("none (prefork baseline: child SIGKILLed, soft limit)",
                     run.run.outcomes == PREFORK_EXPECTED,
                     delivered(run.run.mails, run.run.prefix), describe(run.run.errors),
                     run.run.alive))
    assert run.run.outcomes == PREFORK_EXPECTED
    assert all_once(run.run.mails, run.run.prefix), run.run.mails
    assert run.run.alive
    assert_worker_loss_and_soft_limit(run)
    assert run.metrics is not None
    task = f"{run.run.prefix}.killed_once"
    assert sample(run.metrics, "telemetry_guard_task_failures_total", task=task,
                  exception="WorkerLostError", severity="high") == 1
    assert sample(run.metrics, "telemetry_guard_task_retries_total", task=task,
                  exception="WorkerLostError") == 1
    assert sample(run.metrics, "telemetry_guard_task_giveups_total", task=task,
                  exception="WorkerLostError", severity="high") == 0
    assert sample(run.metrics, "telemetry_guard_task_giveups_total",
                  task=f"{run.run.prefix}.soft_limit", exception="SoftTimeLimitExceeded",
                  severity="high") == 1
    assert run.run.errors == {}


def metrics_failure_reported(run: PreforkRun) -> bool:
    """Whether the worker said, anywhere, that its metrics sink fails."""
    logged = any(e.get("event") == "telemetry.sink_failed" and e.get("sink") == "metrics"
                 for e in run.json_log())
    return logged or run.run.errors.get("metrics", 0) > 0


def signal_handler_errors(run: PreforkRun) -> list[str]:
    """Celery's log lines about a telemetry_guard signal handler that raised."""
    return [line for line in run.log.splitlines()
            if "Signal handler" in line and "GuardSignals" in line]


@pytest.mark.slow
def test_unwritable_metrics_dir_changes_no_outcome_and_no_mail_on_a_prefork_worker(
        prefork_healthy: PreforkRun, prefork_metrics_unwritable: PreforkRun) -> None:
    """``PROMETHEUS_MULTIPROC_DIR`` cannot be created: same outcomes as with a writable one,
    worker loss and soft limit still HIGH events, every mail once, the worker keeps running."""
    run = prefork_metrics_unwritable
    served = run.metrics is not None
    reported = metrics_failure_reported(run)
    record(MatrixRow(
        "metrics multiprocess dir not writable (prefork)",
        run.run.outcomes == prefork_healthy.run.outcomes,
        delivered(run.run.mails, run.run.prefix),
        f"sink=metrics {'reported' if reported else 'NEITHER counted NOR logged'}; "
        f"/metrics {'served' if served else 'NOT served'}", run.run.alive))
    assert run.run.outcomes == prefork_healthy.run.outcomes
    assert all_once(run.run.mails, run.run.prefix), run.run.mails
    assert run.run.alive
    assert_worker_loss_and_soft_limit(run)


@pytest.mark.slow
def test_unwritable_metrics_dir_is_reported_by_the_worker(
        prefork_metrics_unwritable: PreforkRun) -> None:
    """The worker reports its failing metrics sink: a count on /metrics or a log line."""
    assert metrics_failure_reported(prefork_metrics_unwritable)


@pytest.mark.slow
def test_guard_signal_handlers_fail_open_with_an_unwritable_metrics_dir(
        prefork_metrics_unwritable: PreforkRun) -> None:
    """No telemetry_guard signal handler raises into Celery when the metrics dir is unusable."""
    assert signal_handler_errors(prefork_metrics_unwritable) == []


@pytest.mark.slow
def test_a_prefork_childs_give_up_reaches_the_error_log_while_the_worker_runs(
        prefork_healthy: PreforkRun) -> None:
    """The soft-limit give-up (the last failure of the run) is in the error log seconds after
    it happened, not only when the child exits; so is every other failed attempt.

    A give-up appends two entries (error log and dead letters) at once: the writer must be
    woken for them, not left waiting for a flush at the child's exit.
    """
    run = prefork_healthy
    assert [r["exception_type"] for r in records_of(run, "soft_limit")] == [
        "SoftTimeLimitExceeded"]
    # The workload's failed attempts, the lost child's retry and the soft-limit give-up.
    assert len(run.records) == workload.FAILED_ATTEMPTS + 2
