"""Beat's side on a private Redis: entries registered at start and again when the schedule
changes; the heartbeat; the send time stamped only on what beat's thread publishes."""

from __future__ import annotations

import threading
import time
from typing import Any

from celery import Celery
from celery.beat import Scheduler

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
