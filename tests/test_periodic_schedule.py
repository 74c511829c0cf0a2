"""Reading beat schedules: interval, crontab and solar intervals; RedBeat's whole schedule;
a bad entry or an unreadable scheduler logged once and skipped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.beat import Scheduler
from celery.schedules import crontab, solar
from structlog.testing import capture_logs

from telemetry_guard.periodic import schedule as schedule_module
from telemetry_guard.periodic.schedule import from_config, from_scheduler


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("schedules", broker="memory://", set_as_current=False)
    schedule_module._warned.clear()
    yield app
    app.close()


def by_task(entries: list[Any]) -> dict[str, Any]:
    return {entry.task: entry for entry in entries}


def unreadable(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [log for log in logs if log["event"] == "periodic.schedule_unreadable"]


def test_interval_crontab_and_solar_intervals(app: Celery) -> None:
    """An interval's run_every; crontab and solar: the gap between the next two due times."""
    app.conf.beat_schedule = {
        "a": {"task": "t.every_minute", "schedule": 60.0},
        "b": {"task": "t.five_minutes", "schedule": crontab(minute="*/5")},
        "c": {"task": "t.daily", "schedule": crontab(minute=30, hour=4)},
        "d": {"task": "t.sunrise", "schedule": solar("sunrise", 52.37, 4.89)},
    }
    entries = by_task(from_config(app, 1.5))
    assert entries["t.every_minute"].interval == 60.0
    assert entries["t.every_minute"].schedule == "every 60s"
    assert entries["t.five_minutes"].interval == 300.0
    assert entries["t.five_minutes"].schedule == "crontab(*/5 * * * *)"
    assert entries["t.daily"].interval == 86400.0
    # sunrise moves by a few minutes a day at most
    assert 86400 - 600 < entries["t.sunrise"].interval < 86400 + 600
    assert entries["t.sunrise"].schedule == "solar(sunrise, 52.37, 4.89)"
    assert {e.tolerance for e in entries.values()} == {1.5}


def test_two_entries_of_one_task_take_the_smaller_interval(app: Celery) -> None:
    """A task scheduled twice is expected at the smaller of the two intervals."""
    app.conf.beat_schedule = {
        "hourly": {"task": "t.sync", "schedule": 3600.0},
        "often": {"task": "t.sync", "schedule": 120.0},
    }
    assert [(e.task, e.interval) for e in from_config(app, 1.5)] == [("t.sync", 120.0)]


def test_task_option_sets_its_own_tolerance(app: Celery) -> None:
    """``@app.task(periodic_tolerance=3)`` wins over the app's tolerance."""
    @app.task(name="t.lenient", periodic_tolerance=3)
    def lenient() -> None: ...

    app.conf.beat_schedule = {"x": {"task": "t.lenient", "schedule": 10.0},
                              "y": {"task": "t.strict", "schedule": 10.0}}
    entries = by_task(from_config(app, 1.5))
    assert entries["t.lenient"].tolerance == 3.0
    assert entries["t.strict"].tolerance == 1.5


def test_bad_entries_are_logged_once_and_skipped(app: Celery) -> None:
    """Entries without a task, with a schedule that is not one, or not a dict are skipped,
    each logged once with its name and why; the good entry is still read."""
    app.conf.beat_schedule = {
        "good": {"task": "t.good", "schedule": 5.0},
        "no task": {"schedule": 5.0},
        "nonsense schedule": {"task": "t.bad", "schedule": "every tuesday"},
        "not a dict": ["t.x", 5],
    }
    with capture_logs() as logs:
        first = from_config(app, 1.5)
        second = from_config(app, 1.5)
    assert [e.task for e in first] == [e.task for e in second] == ["t.good"]
    logged = unreadable(logs)
    assert sorted(log["entry"] for log in logged) == ["no task", "nonsense schedule",
                                                      "not a dict"]
    assert all(log["why"] for log in logged)


class _OpaqueScheduler(Scheduler):
    """A custom scheduler that keeps its entries to itself."""

    @property
    def schedule(self) -> Any:
        raise NotImplementedError("entries live elsewhere")


def test_unreadable_scheduler_is_logged_once_and_skipped(app: Celery) -> None:
    """A scheduler without readable entries gives None (beat falls back), logged once."""
    scheduler = _OpaqueScheduler(app=app, lazy=True)
    with capture_logs() as logs:
        assert from_scheduler(scheduler, app, 1.5) is None
        assert from_scheduler(scheduler, app, 1.5) is None
    logged = unreadable(logs)
    assert len(logged) == 1
    assert logged[0]["entry"] == "_OpaqueScheduler"
    assert "entries live elsewhere" in logged[0]["why"]


def test_running_default_scheduler_entries(app: Celery) -> None:
    """The entries of celery's own scheduler, as beat holds them."""
    app.conf.beat_schedule = {"a": {"task": "t.a", "schedule": 30.0}}
    scheduler = Scheduler(app=app)
    assert [(e.task, e.interval) for e in from_scheduler(scheduler, app, 2.0) or []] == [
        ("t.a", 30.0)]


def test_redbeat_whole_schedule_is_read(redis_url: str) -> None:
    """RedBeat's ``schedule`` gives only due entries: the guard reads its schedule key."""
    from redbeat.schedulers import RedBeatScheduler, RedBeatSchedulerEntry

    app = Celery("redbeat", broker=redis_url, set_as_current=False)
    app.conf.redbeat_redis_url = redis_url
    RedBeatSchedulerEntry("yearly", "t.yearly", crontab(0, 0, day_of_month=1,
                                                         month_of_year=1), app=app).save()
    RedBeatSchedulerEntry("minutely", "t.minutely", 60.0, app=app).save()
    scheduler = RedBeatScheduler(app=app, lazy=True)
    assert set(scheduler.schedule) == {"minutely"}  # not yet due: left out by RedBeat
    entries = by_task(from_scheduler(scheduler, app, 1.5) or [])
    assert set(entries) == {"t.yearly", "t.minutely"}
    assert entries["t.minutely"].interval == 60.0
    assert entries["t.yearly"].interval >= 365 * 86400
    app.close()
