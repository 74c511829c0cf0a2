"""Reading beat schedules: each entry's task, schedule text, expected interval, tolerance.

Entries come from ``app.conf.beat_schedule`` or from a running beat's scheduler (RedBeat
included: its ``schedule`` property returns only due entries, so its schedule key is read
whole). An entry or a scheduler that cannot be read is logged once and skipped.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

#: Seconds past the next due time from which the due time after it is looked up.
_STEP = datetime.timedelta(seconds=1)

_log = structlog.get_logger("telemetry_guard")
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


@dataclass(frozen=True)
class PeriodicEntry:
    """What monitoring needs of one beat entry (or of the entries of one task)."""

    task: str
    schedule: str
    interval: float
    tolerance: float
    #: The schedule objects of the task's entries (for its deadline; not compared).
    schedules: tuple[Any, ...] = field(default=(), compare=False, repr=False)


def warn_unreadable(entry: str, why: str) -> None:
    """Log ``periodic.schedule_unreadable`` once per entry and reason."""
    with _warned_lock:
        if (entry, why) in _warned:
            return
        _warned.add((entry, why))
    try:
        _log.warning("periodic.schedule_unreadable", entry=entry, why=why)
    except Exception:
        pass


def describe(schedule: Any) -> str:
    """Human text of a schedule: ``every 60s``, ``crontab(*/5 * * * *)``, ``solar(...)``."""
    from celery.schedules import crontab, solar
    from celery.schedules import schedule as interval_schedule

    if isinstance(schedule, crontab):
        fields = (schedule._orig_minute, schedule._orig_hour, schedule._orig_day_of_month,
                  schedule._orig_month_of_year, schedule._orig_day_of_week)
        return "crontab({})".format(" ".join(str(f) for f in fields))
    if isinstance(schedule, solar):
        return f"solar({schedule.event}, {schedule.lat}, {schedule.lon})"
    if isinstance(schedule, interval_schedule):
        return f"every {_seconds_text(schedule.run_every.total_seconds())}"
    return type(schedule).__name__


def _seconds_text(seconds: float) -> str:
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds:g}s"


def expected_interval(schedule: Any) -> float:
    """Seconds between runs: an interval's ``run_every``; for other schedules (crontab,
    solar) the gap between the next two due times, by ``remaining_estimate``."""
    from celery.schedules import crontab, solar
    from celery.schedules import schedule as interval_schedule

    if isinstance(schedule, interval_schedule) and not isinstance(schedule, (crontab, solar)):
        seconds = schedule.run_every.total_seconds()
    else:
        now = schedule.now()
        first = schedule.remaining_estimate(now)
        second = schedule.remaining_estimate(now + first + _STEP)
        # both estimates count from "now", read twice: whole seconds hide the drift
        seconds = float(round((second - first).total_seconds()))
    if not seconds > 0:
        raise ValueError(f"no positive interval ({seconds!r} s)")
    return float(seconds)


def read_entry(name: str, task: Any, schedule: Any, tolerance: float) -> PeriodicEntry | None:
    """One entry, or None (logged once) when it cannot be read."""
    try:
        if not isinstance(task, str) or not task:
            raise ValueError("no task name")
        if isinstance(schedule, (int, float, datetime.timedelta)):
            from celery.schedules import schedule as interval_schedule

            schedule = interval_schedule(schedule)
        return PeriodicEntry(task, describe(schedule), expected_interval(schedule), tolerance,
                             (schedule,))
    except Exception as exc:
        warn_unreadable(str(name), f"{type(exc).__name__}: {exc}")
        return None


def tolerance_of(app: Any, task: str, default: float) -> float:
    """The task option ``periodic_tolerance`` of a registered task, else ``default``."""
    try:
        registered = app.tasks.get(task) if app is not None else None
        value = getattr(registered, "periodic_tolerance", None)
        if value is not None and float(value) > 1:
            return float(value)
    except Exception:
        pass
    return default


def from_config(app: Any, default_tolerance: float) -> list[PeriodicEntry]:
    """The entries of ``app.conf.beat_schedule``."""
    try:
        config = app.conf.beat_schedule or {}
        items = list(config.items())
    except Exception as exc:
        warn_unreadable("beat_schedule", f"{type(exc).__name__}: {exc}")
        return []
    found = []
    for name, spec in items:
        if not isinstance(spec, Mapping):
            warn_unreadable(str(name), "not a dict with 'task' and 'schedule'")
            continue
        task = spec.get("task")
        entry = read_entry(name, task, spec.get("schedule"),
                           tolerance_of(app, task, default_tolerance)
                           if isinstance(task, str) else default_tolerance)
        if entry is not None:
            found.append(entry)
    return merge_by_task(found)


def from_scheduler(scheduler: Any, app: Any,
                   default_tolerance: float) -> list[PeriodicEntry] | None:
    """The entries of a running beat's scheduler (RedBeat's whole schedule key); None when
    the scheduler exposes none (logged once)."""
    try:
        raw = _redbeat_entries(scheduler, app)
        if raw is None:
            schedule = scheduler.schedule
            if not isinstance(schedule, Mapping):
                raise TypeError(f"{type(scheduler).__name__}.schedule is not a mapping")
            raw = list(schedule.items())
    except Exception as exc:
        warn_unreadable(type(scheduler).__name__, f"{type(exc).__name__}: {exc}")
        return None
    found = []
    for name, entry in raw:
        task = getattr(entry, "task", None)
        read = read_entry(name, task, getattr(entry, "schedule", None),
                          tolerance_of(app, task, default_tolerance)
                          if isinstance(task, str) else default_tolerance)
        if read is not None:
            found.append(read)
    return merge_by_task(found)


def _redbeat_entries(scheduler: Any, app: Any) -> list[tuple[str, Any]] | None:
    """Every RedBeat entry, read from its schedule key; None for another scheduler."""
    entry_class = getattr(scheduler, "Entry", None)
    conf = getattr(app, "redbeat_conf", None)
    if conf is None or not hasattr(entry_class, "from_key"):
        return None
    from redbeat.schedulers import get_redis

    entries = []
    for key in get_redis(app).zrange(conf.schedule_key, 0, -1):
        key = key.decode() if isinstance(key, bytes) else key
        try:
            entry = entry_class.from_key(key, app=app)
        except Exception as exc:
            warn_unreadable(key, f"{type(exc).__name__}: {exc}")
            continue
        entries.append((entry.name, entry))
    return entries


def merge_by_task(entries: Iterable[PeriodicEntry]) -> list[PeriodicEntry]:
    """One entry per task: two entries of one task run it at the smaller interval (and
    keep the schedules of both)."""
    by_task: dict[str, PeriodicEntry] = {}
    for entry in entries:
        known = by_task.get(entry.task)
        if known is None:
            by_task[entry.task] = entry
            continue
        kept = entry if entry.interval < known.interval else known
        by_task[entry.task] = replace(kept, schedules=known.schedules + entry.schedules)
    return sorted(by_task.values(), key=lambda e: e.task)
