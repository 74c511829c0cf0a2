"""Worker side and watcher of periodic monitoring on a private Redis: a periodic task's runs
are recorded off its thread, a plain task pays only the lookup; missed runs and beat
outages are told once, with the task's severity."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from celery import Celery

from telemetry_guard import TelemetryGuard
from telemetry_guard.core.classify import Severity
from telemetry_guard.periodic.runs import WRITER_NAME
from telemetry_guard.periodic.schedule import PeriodicEntry
from tests.servers import wait_for


def periodic_keys(redis_url: str) -> list[bytes]:
    return sorted(redis.Redis.from_url(redis_url).keys("telemetry_guard:periodic*"))


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == WRITER_NAME]


def test_plain_task_pays_only_the_lookup(celery_app: Celery, redis_url: str) -> None:
    """A task outside the schedule starts no periodic writer and writes no key; a task in
    the schedule is recorded (start, success) by the writer thread."""
    celery_app.conf.beat_schedule = {"tick": {"task": "p.tick", "schedule": 60.0}}
    guard = TelemetryGuard(celery_app)

    @celery_app.task(name="p.plain")
    def plain() -> str:
        return "plain"

    @celery_app.task(name="p.tick")
    def tick() -> str:
        return "tick"

    runs = guard.periodic.runs
    assert writer_threads() == [] or all(not t.is_alive() for t in writer_threads())
    for _ in range(20):
        assert plain.apply().get() == "plain"
    guard.flush()
    assert runs.writer.thread is None
    assert periodic_keys(redis_url) == []

    before = time.time()
    assert tick.apply().get() == "tick"
    runs.writer.flush(5.0)
    assert runs.writer.thread is not None
    record = redis.Redis.from_url(redis_url).hgetall("telemetry_guard:periodic:{p.tick}")
    assert float(record[b"last_run"]) >= before
    assert float(record[b"last_success"]) >= float(record[b"last_run"])
    assert b"last_failure" not in record


def test_failed_end_is_a_failure_and_running_runs_overlap(celery_app: Celery,
                                                          redis_url: str) -> None:
    """A run that fails sets last_failure (state failing); a start while another run is in
    progress counts an overlap."""
    from telemetry_guard.periodic.states import FAILING, task_state

    celery_app.conf.beat_schedule = {"job": {"task": "p.job", "schedule": 60.0}}
    guard = TelemetryGuard(celery_app)
    store = guard.periodic.store
    store.register([PeriodicEntry("p.job", "every 60s", 60.0, 1.5)])

    @celery_app.task(name="p.job")
    def job() -> None:
        raise ValueError("broken")

    job.apply()
    guard.periodic.runs.writer.flush(5.0)
    now = time.time()
    store.write([("start", "p.job", "run-1", now, None), ("start", "p.job", "run-2", now, 0.2)])
    snapshot = store.snapshot()
    (task,) = snapshot.tasks
    assert task.last_failure is not None and task.last_success is None
    assert task.overlaps == 1 and task.running == 2
    assert task.last_start_delay == 0.2
    assert task_state(task, snapshot.beat, snapshot.now) == FAILING


def _guard_with_schedule(app: Celery) -> TelemetryGuard:
    app.conf.telemetry_guard_error_log_flush_interval = 0.05
    guard = TelemetryGuard(app)
    app.task(name="p.critical_job", severity="critical")(_critical_job)
    return guard


def _critical_job() -> None:
    """A task whose failures are CRITICAL."""


def test_missed_run_is_told_once_with_the_tasks_severity(celery_app: Celery) -> None:
    """A task without a run for interval × tolerance is one PeriodicRunMissed event, with the
    task's severity and channels; checking again (or from another process) tells nothing."""
    guard = _guard_with_schedule(celery_app)
    store = guard.periodic.store
    now = time.time()
    store.beat(10.0, started=now - 100, now=now)
    store.register([PeriodicEntry("p.critical_job", "every 10s", 10.0, 1.5),
                    PeriodicEntry("p.fine", "every 10s", 10.0, 1.5)], now=now - 16)
    store.write([("start", "p.fine", "r1", now - 1, None)])
    events = guard.periodic.watcher.check(now)
    assert [(e.task_name, e.exception_type, e.reason, e.severity) for e in events] == [
        ("p.critical_job", "PeriodicRunMissed", "periodic_missed", Severity.CRITICAL)]
    assert events[0].channels == frozenset({"sentry", "email"})
    assert events[0].decision == "give_up"
    other_process = TelemetryGuard(Celery("other", broker=celery_app.conf.broker_url,
                                          set_as_current=False))
    assert other_process.periodic.watcher.check(now + 1) == []
    assert guard.periodic.watcher.check(now + 2) == []
    other_process.close()


def test_watcher_tells_a_missed_run_by_its_deadline(celery_app: Celery) -> None:
    """A weekday task that last ran 37 hours ago (over interval × tolerance) whose deadline
    beat stored is still ahead is not told; past its deadline it is, once."""
    guard = _guard_with_schedule(celery_app)
    store = guard.periodic.store
    now = time.time()
    last_run = now - 37 * 3600
    store.beat(10.0, started=now - 40 * 3600, now=now)
    store.register([PeriodicEntry("p.critical_job", "crontab(0 9 * * mon-fri)", 86400.0,
                                  1.5)], now=now - 50 * 3600)
    store.write([("start", "p.critical_job", "r1", last_run, None)])
    store.set_deadlines({"p.critical_job": (now + 3600, last_run)})
    assert guard.periodic.watcher.check(now) == []
    store.beat(10.0, now=now + 3601)
    events = guard.periodic.watcher.check(now + 3601)
    assert [(e.task_name, e.exception_type) for e in events] == [
        ("p.critical_job", "PeriodicRunMissed")]
    assert guard.periodic.watcher.check(now + 3602) == []


def test_beat_down_is_told_once_and_missed_runs_are_not(celery_app: Celery) -> None:
    """Beat silent for 3 heartbeats: one BeatDown (HIGH), and no missed run meanwhile."""
    guard = _guard_with_schedule(celery_app)
    store = guard.periodic.store
    now = time.time()
    store.register([PeriodicEntry("p.critical_job", "every 10s", 10.0, 1.5)], now=now - 100)
    store.beat(1.0, started=now - 200, now=now - 3.5)
    events: list[Any] = guard.periodic.watcher.check(now)
    assert [(e.task_name, e.exception_type, e.severity, e.reason) for e in events] == [
        ("celery.beat", "BeatDown", Severity.HIGH, "beat_down")]
    assert guard.periodic.watcher.check(now + 1) == []
    store.beat(1.0, now=now + 2)  # beat back: the missed run is told now
    assert [e.exception_type for e in guard.periodic.watcher.check(now + 2)] == [
        "PeriodicRunMissed"]


def test_error_log_gets_the_missed_run(celery_app: Celery, redis_url: str) -> None:
    """The event goes through the guard's sinks: the error log has it."""
    import json

    guard = _guard_with_schedule(celery_app)
    now = time.time()
    guard.periodic.store.beat(10.0, now=now)
    guard.periodic.store.register([PeriodicEntry("p.critical_job", "every 10s", 10.0, 1.5)],
                                  now=now - 60)
    guard.periodic.watcher.check(now)
    guard.flush()
    client = redis.Redis.from_url(redis_url)
    records = wait_for(lambda: client.xrange("telemetry_guard:errors"), timeout=5)
    record = json.loads(records[0][1][b"record"])
    assert record["exception_type"] == "PeriodicRunMissed"
    assert record["task_name"] == "p.critical_job"
    assert record["severity"] == "critical"


def test_otlp_instruments_read_the_shared_state(celery_app: Celery) -> None:
    """With OTLP metrics, the periodic families are observable instruments read at export."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from telemetry_guard.periodic.collector import install_otel_gauges

    guard = TelemetryGuard(celery_app)
    guard.periodic.store.register([PeriodicEntry("p.otlp", "every 5s", 5.0, 1.5)])
    guard.periodic.store.beat(2.0)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    install_otel_gauges(provider)
    points = {m.name: [(dict(p.attributes), p.value) for p in m.data.data_points]
              for rm in reader.get_metrics_data().resource_metrics
              for sm in rm.scope_metrics for m in sm.metrics}
    assert points["telemetry_guard_periodic_expected_interval_seconds"] == [
        ({"task": "p.otlp"}, 5.0)]
    assert points["telemetry_guard_beat_heartbeat_interval_seconds"] == [({}, 2.0)]
    assert "telemetry_guard_periodic_last_run_timestamp_seconds" not in points  # never ran
    assert "telemetry_guard_periodic_missed_after_timestamp_seconds" not in points
    since = guard.periodic.store.snapshot().tasks[0].monitored_since
    guard.periodic.store.set_deadlines({"p.otlp": (since + 7.5, since)})
    points = {m.name: [(dict(p.attributes), p.value) for p in m.data.data_points]
              for rm in reader.get_metrics_data().resource_metrics
              for sm in rm.scope_metrics for m in sm.metrics}
    assert points["telemetry_guard_periodic_missed_after_timestamp_seconds"] == [
        ({"task": "p.otlp"}, since + 7.5)]
    provider.shutdown()


def test_lost_run_ends_as_a_failure(celery_app: Celery) -> None:
    """A run whose pool child was lost (the main process tells ``task_failure``, no
    ``task_postrun`` comes) leaves the running set as a failure: the next start is no
    overlap."""
    from billiard.exceptions import WorkerLostError
    from celery import signals

    celery_app.conf.beat_schedule = {"lost": {"task": "p.lost", "schedule": 60.0}}
    guard = TelemetryGuard(celery_app, observe_all_tasks=False)
    store = guard.periodic.store
    store.register([PeriodicEntry("p.lost", "every 60s", 60.0, 1.5)])

    @celery_app.task(name="p.lost")
    def lost() -> None: ...

    store.write([("start", "p.lost", "run-1", time.time(), None)])
    signals.task_failure.send(sender=lost, task_id="run-1",
                              exception=WorkerLostError("killed"))
    guard.periodic.runs.writer.flush(5.0)
    store.write([("start", "p.lost", "run-2", time.time(), None)])
    (task,) = store.snapshot().tasks
    assert task.running == 1 and task.overlaps == 0
    assert task.last_failure is not None


def test_a_run_ends_as_it_started_even_if_the_names_change_meanwhile(
        celery_app: Celery) -> None:
    """``task_postrun`` ends the runs ``task_prerun`` started in this process: a run that
    started as periodic ends, though its task left the names meanwhile (it is not left
    running, which would fake an overlap), and an end without a start writes nothing."""
    from celery import signals

    celery_app.conf.beat_schedule = {"moved": {"task": "p.moved", "schedule": 60.0}}
    guard = TelemetryGuard(celery_app, observe_all_tasks=False)
    runs, store = guard.periodic.runs, guard.periodic.store
    store.register([PeriodicEntry("p.moved", "every 60s", 60.0, 1.5)])

    @celery_app.task(name="p.moved")
    def moved() -> None: ...

    signals.task_prerun.send(sender=moved, task_id="run-1", task=moved)
    runs.names = frozenset()  # a refresh no longer lists it
    signals.task_postrun.send(sender=moved, task_id="run-1", task=moved, state="SUCCESS")
    signals.task_postrun.send(sender=moved, task_id="never-started", task=moved,
                              state="FAILURE")
    runs.writer.flush(5.0)
    (task,) = store.snapshot().tasks
    assert task.running == 0 and task.overlaps == 0
    assert task.last_success is not None and task.last_failure is None


def test_monitoring_off_records_nothing(celery_app: Celery, redis_url: str) -> None:
    """``periodic_monitoring=False``: a scheduled task's runs write no periodic key."""
    celery_app.conf.beat_schedule = {"off": {"task": "p.off", "schedule": 60.0}}
    guard = TelemetryGuard(celery_app, periodic_monitoring=False)

    @celery_app.task(name="p.off")
    def off() -> str:
        return "off"

    assert off.apply().get() == "off"
    assert guard.periodic is None
    assert periodic_keys(redis_url) == []


def test_monitoring_without_redis_is_said_once() -> None:
    """Without the guard's Redis, monitoring is off, and the log says so once."""
    from structlog.testing import capture_logs

    from telemetry_guard.periodic import monitor

    monitor._said_off = False
    apps = [Celery(f"no_redis_{i}", broker="memory://", set_as_current=False)
            for i in range(2)]
    guards = []
    with capture_logs() as logs:
        for app in apps:
            app.conf.beat_schedule = {"x": {"task": "p.x", "schedule": 5.0}}
            guards.append(TelemetryGuard(app))
            assert guards[-1].periodic is None
    assert [log["event"] for log in logs].count("periodic.monitoring_off") == 1
    for guard, app in zip(guards, apps, strict=True):
        guard.close()
        app.close()
