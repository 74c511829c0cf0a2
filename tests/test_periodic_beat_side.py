"""Beat's side on a private Redis: entries registered at start and again when the schedule
changes; the heartbeat; the send time stamped only on what beat's thread publishes."""

from __future__ import annotations

import datetime
import threading
import time
from typing import Any

import pytest
from celery import Celery
from celery.beat import Scheduler
from celery.schedules import crontab

from telemetry_guard import TelemetryGuard
from telemetry_guard.periodic.beat import stamp_beat_publish
from telemetry_guard.periodic.runs import SENT_HEADER
from tests.servers import wait_for


class _Service:
    """What ``beat_init`` sends: the beat service, with its app and scheduler."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.scheduler = Scheduler(app=app)


def test_entries_registered_and_changes_followed(celery_app: Celery) -> None:
    """Beat's start registers its entries and beats; an entry added later is registered, one
    removed leaves the index; only beat's thread stamps what it publishes."""
    celery_app.conf.beat_schedule = {"a": {"task": "b.a", "schedule": 30.0}}
    guard = TelemetryGuard(celery_app, beat_heartbeat_interval=0.1)
    monitor = guard.periodic
    service = _Service(celery_app)
    stamped: dict[str, Any] = {}
    other: dict[str, Any] = {}
    try:
        runner = threading.Thread(target=lambda: (monitor.beat.on_beat_init(service),
                                                  stamp_beat_publish(headers=stamped)))
        runner.start()
        runner.join()
        stamp_beat_publish(headers=other)
        assert isinstance(stamped.get(SENT_HEADER), float) and other == {}
        snapshot = monitor.store.snapshot()
        assert [t.task for t in snapshot.tasks] == ["b.a"]
        assert snapshot.tasks[0].interval == 30.0
        assert snapshot.beat.interval == 0.1
        first = snapshot.beat.heartbeat
        assert first is not None
        wait_for(lambda: (monitor.store.snapshot().beat.heartbeat or 0) > first, timeout=3)

        service.scheduler.update_from_dict({"b": {"task": "b.b", "schedule": 5.0}})
        wait_for(lambda: monitor.store.task_names() == {"b.a", "b.b"}, timeout=3)
        del service.scheduler.schedule["a"]
        wait_for(lambda: monitor.store.task_names() == {"b.b"}, timeout=3)
        since = {t.task: t.monitored_since for t in monitor.store.snapshot().tasks}
        time.sleep(0.3)
        assert {t.task: t.monitored_since for t in monitor.store.snapshot().tasks} == since
    finally:
        guard.close()


def next_weekday_nine(after: float) -> float:
    """The first 9:00 UTC on a Monday to Friday strictly after ``after``."""
    day = datetime.datetime.fromtimestamp(after, tz=datetime.timezone.utc).replace(
        hour=9, minute=0, second=0, microsecond=0)
    while day.timestamp() <= after or day.weekday() > 4:
        day += datetime.timedelta(days=1)
    return day.timestamp()


def test_deadlines_stored_at_start_and_after_each_run(celery_app: Celery) -> None:
    """Beat's start stores each task's deadline from beat's start; after a run, its heartbeat
    stores the one counted from the run: an interval's is last run + interval × tolerance,
    a weekday crontab's the next weekday 9:00 plus half that slot."""
    celery_app.conf.timezone = "UTC"
    celery_app.conf.beat_schedule = {
        "often": {"task": "b.often", "schedule": 30.0},
        "workdays": {"task": "b.report",
                     "schedule": crontab(minute=0, hour=9, day_of_week="mon-fri")}}
    guard = TelemetryGuard(celery_app, beat_heartbeat_interval=0.1)
    monitor = guard.periodic
    try:
        monitor.beat.on_beat_init(_Service(celery_app))
        started = monitor.store.snapshot().beat.started
        assert started is not None
        tasks = {t.task: t for t in monitor.store.snapshot().tasks}
        anchor = max(started, tasks["b.often"].monitored_since or 0)
        assert tasks["b.often"].missed_after == pytest.approx(anchor + 45.0, abs=1e-3)
        first = next_weekday_nine(max(started, tasks["b.report"].monitored_since or 0))
        second = next_weekday_nine(first)
        assert tasks["b.report"].missed_after == pytest.approx(
            first + 0.5 * (second - first), abs=0.01)

        run_at = time.time()
        monitor.store.write([("start", "b.often", "run-1", run_at, None),
                             ("start", "b.report", "run-2", run_at, None)])
        wait_for(lambda: all(t.missed_after is not None and t.last_run == run_at
                             for t in monitor.store.snapshot().tasks), timeout=3)
        tasks = {t.task: t for t in monitor.store.snapshot().tasks}
        assert tasks["b.often"].missed_after == pytest.approx(run_at + 45.0, abs=1e-3)
        first = next_weekday_nine(run_at)
        assert tasks["b.report"].missed_after == pytest.approx(
            first + 0.5 * (next_weekday_nine(first) - first), abs=0.01)
    finally:
        guard.close()
