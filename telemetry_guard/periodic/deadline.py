"""A periodic task's deadline: the time after which it is missed.

The deadline is the first due time after the anchor (the last run, else when monitoring
first saw the task; beat's start when beat started later) plus the slack
``(tolerance - 1) × the gap of that slot`` (from that due time to the next one). For an
interval schedule that is ``anchor + interval × tolerance``; for a crontab with uneven gaps
(weekdays only, monthly) or a solar schedule, a long gap (the weekend) is not a false alarm.

Due times come from the schedule's ``remaining_estimate``, so any schedule class that
implements it works; one that cannot be read has no deadline (logged once), and the
states fall back to ``interval × tolerance``.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Any

from .schedule import PeriodicEntry, warn_unreadable

#: A due time closer than this to the time it was looked up after is that same due time
#: again (a solar event searched from its own instant, a crontab minute a clock read early);
#: the next one is then looked up from ``_STEP`` seconds later.
_SAME = 0.5
_STEP = 1.0


def next_due(schedule: Any, after: float) -> float:
    """The first due time (epoch seconds) of ``schedule`` after ``after``."""
    after_at = datetime.datetime.fromtimestamp(after, tz=datetime.timezone.utc)
    before = schedule.now().timestamp()
    remaining = schedule.remaining_estimate(after_at).total_seconds()
    later = schedule.now().timestamp()
    # ``remaining`` counts from the schedule's clock read in between
    return (before + later) / 2 + remaining


def first_due(schedules: Sequence[Any], after: float) -> float:
    """The first due time of any of ``schedules`` after ``after`` (a due time answered
    again at ``after`` itself is skipped)."""
    found = []
    for schedule in schedules:
        due = next_due(schedule, after)
        if due - after < _SAME:
            due = next_due(schedule, after + _STEP)
        found.append(due)
    return min(found)


def schedule_deadline(schedules: Sequence[Any], anchor: float, tolerance: float) -> float:
    """The first due time of ``schedules`` after ``anchor`` plus ``(tolerance - 1)`` × the
    gap to the due time after it."""
    first = first_due(schedules, anchor)
    gap = first_due(schedules, first) - first
    if not gap > 0:
        raise ValueError(f"no positive gap after the due time ({gap!r} s)")
    return first + (tolerance - 1) * gap


def anchor_of(last_run: float | None, monitored_since: float | None,
              beat_started: float | None) -> float | None:
    """The last run, else when monitoring first saw the task; beat's start when later (a
    run beat could not send while it was down is not missed)."""
    base = last_run if last_run is not None else monitored_since
    if base is None:
        return beat_started
    return max(base, beat_started) if beat_started is not None else base


def entry_deadline(entry: PeriodicEntry, anchor: float) -> float | None:
    """The deadline of the task's schedules (their due times merged); None (logged once)
    when it cannot be computed."""
    if not entry.schedules:
        return None
    try:
        return schedule_deadline(entry.schedules, anchor, entry.tolerance)
    except Exception as exc:
        warn_unreadable(entry.task, f"no deadline: {type(exc).__name__}: {exc}")
        return None


def deadlines(entries: Iterable[PeriodicEntry],
              baselines: dict[str, tuple[float | None, float | None]],
              beat_started: float | None) -> dict[str, tuple[float, float]]:
    """``task → (deadline, anchor)`` for each entry whose ``(last_run, monitored_since)``
    is known."""
    found = {}
    for entry in entries:
        last_run, monitored_since = baselines.get(entry.task, (None, None))
        anchor = anchor_of(last_run, monitored_since, beat_started)
        if anchor is None:
            continue
        deadline = entry_deadline(entry, anchor)
        if deadline is not None:
            found[entry.task] = (deadline, anchor)
    return found
