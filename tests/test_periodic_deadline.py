"""The deadline after which a periodic task is missed: an interval schedule as before
(last run + interval × tolerance), a weekday crontab across a weekend, a solar schedule;
the stored deadline only counts for the baseline it was computed from."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import ephem
import pytest
from celery import Celery
from celery.schedules import crontab, schedule, solar

from telemetry_guard.periodic import schedule as schedule_module
from telemetry_guard.periodic.deadline import anchor_of, deadlines, schedule_deadline
from telemetry_guard.periodic.schedule import PeriodicEntry, read_entry
from telemetry_guard.periodic.states import task_state
from telemetry_guard.periodic.store import BeatRecord, PeriodicStore, TaskRecord

UTC = datetime.timezone.utc


def at(*fields: int) -> float:
    """Epoch seconds of a UTC date and time."""
    return datetime.datetime(*fields, tzinfo=UTC).timestamp()  # type: ignore[misc]


# 2026-11-27 is a Friday, 2026-11-30 the Monday after.
FRIDAY_RUN = at(2026, 11, 27, 9, 0, 4)
SATURDAY_NIGHT = at(2026, 11, 28, 22)
MONDAY_9 = at(2026, 11, 30, 9)
HOUR = 3600.0


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("deadline", broker="memory://", set_as_current=False)
    app.conf.timezone = "UTC"
    schedule_module._warned.clear()
    yield app
    app.close()


def frozen(now: float) -> Any:
    """A schedule clock stopped at ``now``."""
    return lambda: datetime.datetime.fromtimestamp(now, tz=UTC)


def weekday_record(app: Celery, now: float, tolerance: float = 1.5) -> TaskRecord:
    """The record of a weekday-9:00 task last run on Friday, as beat and the CLI see it at
    ``now``: its deadline as beat stores it, its interval as registration reads it."""
    workdays = crontab(minute=0, hour=9, day_of_week="mon-fri", app=app, nowfun=frozen(now))
    entry = read_entry("report", "shop.report", workdays, tolerance)
    assert entry is not None
    (deadline, anchor), = deadlines([entry], {"shop.report": (FRIDAY_RUN, FRIDAY_RUN - HOUR)},
                                    beat_started=FRIDAY_RUN - 2 * HOUR).values()
    assert anchor == FRIDAY_RUN
    return TaskRecord("shop.report", entry.schedule, interval=entry.interval,
                      tolerance=tolerance, monitored_since=FRIDAY_RUN - HOUR,
                      last_run=FRIDAY_RUN, last_success=FRIDAY_RUN + 1, missed_after=deadline)


def beat_alive(now: float) -> BeatRecord:
    return BeatRecord(heartbeat=now - 1, interval=10, started=FRIDAY_RUN - 2 * HOUR)


def test_interval_schedule_deadline_is_last_run_plus_interval_times_tolerance(
        app: Celery) -> None:
    """Every 5 minutes, tolerance 1.5: missed 7m30s after the last run, as before."""
    last_run = at(2026, 11, 28, 12, 0, 0) + 0.25
    every = schedule(datetime.timedelta(minutes=5), app=app, nowfun=frozen(last_run + 100))
    deadline = schedule_deadline([every], last_run, 1.5)
    assert deadline == pytest.approx(last_run + 450, abs=1e-6)
    record = TaskRecord("t", "every 300s", interval=300.0, tolerance=1.5, last_run=last_run,
                        last_success=last_run + 1, missed_after=deadline)
    old = TaskRecord("t", "every 300s", interval=300.0, tolerance=1.5, last_run=last_run,
                     last_success=last_run + 1)
    for now in (last_run + 449, last_run + 451):
        assert task_state(record, beat_alive(now), now) == task_state(old, beat_alive(now), now)
    assert task_state(record, beat_alive(last_run + 451), last_run + 451) == "missed"


def test_weekday_crontab_is_not_missed_over_the_weekend(app: Celery) -> None:
    """Mon-fri at 9:00, last run Friday: Saturday is quiet (interval × tolerance alone said
    missed); the deadline is Monday 9:00 plus half a day's slot."""
    record = weekday_record(app, SATURDAY_NIGHT)
    assert record.missed_after == MONDAY_9 + 0.5 * 86400
    assert task_state(record, beat_alive(SATURDAY_NIGHT), SATURDAY_NIGHT) == "ok"
    without_deadline = TaskRecord(**{**record.__dict__, "missed_after": None})
    assert task_state(without_deadline, beat_alive(SATURDAY_NIGHT), SATURDAY_NIGHT) == "missed"
    sunday_night = at(2026, 11, 29, 23, 59)
    assert task_state(weekday_record(app, sunday_night), beat_alive(sunday_night),
                      sunday_night) == "ok"


def test_weekday_crontab_is_missed_on_monday_past_the_slack(app: Celery) -> None:
    """Monday's 9:00 run did not happen: still ok at 20:59, missed from 21:00 on."""
    before, after = MONDAY_9 + 12 * HOUR - 60, MONDAY_9 + 12 * HOUR + 1
    assert task_state(weekday_record(app, before), beat_alive(before), before) == "ok"
    assert task_state(weekday_record(app, after), beat_alive(after), after) == "missed"
    # a larger tolerance widens only the slack of Monday's slot
    wide = weekday_record(app, after, tolerance=2.0)
    assert wide.missed_after == MONDAY_9 + 86400
    assert task_state(wide, beat_alive(after), after) == "ok"


def sunrises(lat: float, lon: float, start: float, count: int) -> list[float]:
    """The next ``count`` sunrises after ``start``, straight from ephem."""
    observer = ephem.Observer()
    observer.lat, observer.lon = str(lat), str(lon)
    observer.horizon, observer.pressure = "-0:34", 0
    found, when = [], ephem.Date(datetime.datetime.fromtimestamp(start, tz=UTC)
                                 .replace(tzinfo=None))
    for _ in range(count):
        when = observer.next_rising(ephem.Sun(), start=when)
        found.append(ephem.Date(when).datetime().replace(tzinfo=UTC).timestamp())
        when = ephem.Date(when + ephem.second)
    return found


def test_solar_deadline_is_next_event_plus_the_slack_of_its_gap(app: Celery) -> None:
    """Sunrise in Stockholm (days shorten by minutes a day in November): the first sunrise
    after the last run plus (tolerance - 1) × the gap to the sunrise after it."""
    lat, lon = 59.33, 18.06
    first_sunrise = sunrises(lat, lon, at(2026, 11, 27), 1)[0]
    last_run = first_sunrise + 3
    sunrise = solar("sunrise", lat, lon, app=app, nowfun=frozen(last_run + 60))
    next_one, after_it = sunrises(lat, lon, last_run, 2)
    deadline = schedule_deadline([sunrise], last_run, 1.5)
    assert deadline == pytest.approx(next_one + 0.5 * (after_it - next_one), abs=2.0)
    assert 86400 < next_one - last_run < 86400 + 600  # the next day, minutes later
    record = TaskRecord("t", "solar", interval=after_it - next_one, tolerance=1.5,
                        last_run=last_run, missed_after=deadline)
    assert task_state(record, beat_alive(deadline - 5), deadline - 5) == "ok"
    assert task_state(record, beat_alive(deadline + 5), deadline + 5) == "missed"


def test_two_entries_of_a_task_take_the_earliest_deadline(app: Celery) -> None:
    """A task scheduled weekdays at 9:00 and Saturdays at 10:00: Friday's run is due again
    Saturday at 10:00, and that slot lasts until Monday 9:00 (the schedules' due times
    merged, not each schedule's deadline alone)."""
    now = SATURDAY_NIGHT
    entries = [read_entry(name, "shop.report", spec, 1.5) for name, spec in (
        ("weekdays", crontab(minute=0, hour=9, day_of_week="mon-fri", app=app,
                             nowfun=frozen(now))),
        ("saturdays", crontab(minute=0, hour=10, day_of_week="sat", app=app,
                              nowfun=frozen(now))))]
    merged = schedule_module.merge_by_task(e for e in entries if e is not None)
    (deadline, _), = deadlines(merged, {"shop.report": (FRIDAY_RUN, None)}, None).values()
    saturday_10 = at(2026, 11, 28, 10)
    assert deadline == saturday_10 + 0.5 * (MONDAY_9 - saturday_10)


def test_anchor_is_the_last_run_else_monitored_since_and_beat_start_when_later() -> None:
    assert anchor_of(100.0, 50.0, 10.0) == 100.0
    assert anchor_of(None, 50.0, 10.0) == 50.0
    assert anchor_of(100.0, 50.0, 200.0) == 200.0   # beat restarted after the last run
    assert anchor_of(None, None, 200.0) == 200.0
    assert anchor_of(None, None, None) is None


class NoEstimate:
    """A schedule class that cannot say when it is due next."""

    def now(self) -> datetime.datetime:
        return datetime.datetime.now(UTC)

    def remaining_estimate(self, last_run_at: datetime.datetime) -> datetime.timedelta:
        raise NotImplementedError("no estimate")


def test_a_schedule_without_an_estimate_has_no_deadline_and_does_not_raise() -> None:
    entry = PeriodicEntry("custom.task", "NoEstimate", 60.0, 1.5, (NoEstimate(),))
    assert deadlines([entry], {"custom.task": (100.0, 50.0)}, None) == {}


@pytest.mark.parametrize(("stored", "expected"), [
    ({"missed_after": "500.0", "missed_after_anchor": "100.0"}, 500.0),   # for this run
    ({"missed_after": "500.0", "missed_after_anchor": "150.0"}, 500.0),   # from beat's start
    ({"missed_after": "500.0", "missed_after_anchor": "90.0"}, None),     # a run since
    ({"missed_after": "500.0"}, None),
    ({}, None),
])
def test_a_stored_deadline_counts_only_for_the_baseline_it_was_computed_from(
        stored: dict[str, str], expected: float | None) -> None:
    """Between a run and beat's next heartbeat the stored deadline is the previous run's:
    the record has none, so the states fall back to interval × tolerance."""
    raw = {"interval": b"60", "tolerance": b"1.5", "monitored_since": b"10.0",
           "last_run": b"100.0", **{k: v.encode() for k, v in stored.items()}}
    record = PeriodicStore._task_record("t", raw, [], now=200.0)
    assert record.missed_after == expected


def test_crontab_due_times_are_in_the_apps_timezone(app: Celery) -> None:
    """9:00 in New York (UTC-5 in November) is 14:00 UTC: Friday's run is missed from
    Monday 14:00 + 12h UTC."""
    app.conf.timezone = "America/New_York"
    friday_run = at(2026, 11, 27, 14, 0, 3)
    workdays = crontab(minute=0, hour=9, day_of_week="mon-fri", app=app,
                       nowfun=frozen(SATURDAY_NIGHT))
    assert schedule_deadline([workdays], friday_run, 1.5) == at(2026, 11, 30, 14) + 12 * HOUR
