"""The states of beat and of each periodic task, by the shared contract's definitions.

- beat down: now - heartbeat > 3 × heartbeat interval;
- missed: now > the task's deadline (``missed_after``: the first due time after the last
  run, plus (tolerance - 1) × that slot's gap) when beat stored one for the current
  baseline, else now - (last run, else monitored since) > interval × tolerance
  (``beat down`` instead while beat is down);
- failing: last failure > (last success, else monitored since);
- overlapping: more than one run in progress, or an overlap in the last 15 minutes;
- late: last start delay > interval × (tolerance - 1);
- ``waiting`` for a task never run and not yet missed; ``ok`` otherwise.
"""

from __future__ import annotations

from .store import BeatRecord, TaskRecord

#: Heartbeat intervals without a heartbeat after which beat is down.
BEAT_DOWN_BEATS = 3
#: Seconds an overlap keeps a task ``overlapping``.
OVERLAP_WINDOW = 15 * 60
DEFAULT_TOLERANCE = 1.5

OK, WAITING, MISSED, LATE, OVERLAPPING, FAILING, BEAT_DOWN = (
    "ok", "waiting", "missed", "late", "overlapping", "failing", "beat down")


def beat_down(beat: BeatRecord, now: float) -> bool:
    """Whether beat missed three heartbeats (a beat never seen is not "down")."""
    if beat.heartbeat is None or not beat.interval:
        return False
    return now - beat.heartbeat > BEAT_DOWN_BEATS * beat.interval


def beat_status(beat: BeatRecord, now: float) -> str:
    """``alive``, ``down`` or ``never seen``."""
    if beat.heartbeat is None:
        return "never seen"
    return "down" if beat_down(beat, now) else "alive"


def baseline(task: TaskRecord) -> float | None:
    """The last run, else when monitoring first saw the entry."""
    return task.last_run if task.last_run is not None else task.monitored_since


def overdue(task: TaskRecord, now: float) -> bool:
    """Past the task's deadline; without one, no run within interval × tolerance of the
    baseline."""
    if task.missed_after is not None:
        return now > task.missed_after
    base = baseline(task)
    if base is None or not task.interval:
        return False
    return now - base > task.interval * (task.tolerance or DEFAULT_TOLERANCE)


def failing(task: TaskRecord) -> bool:
    """The last failed end is newer than the last success (else the baseline)."""
    if task.last_failure is None:
        return False
    reference = task.last_success if task.last_success is not None else task.monitored_since
    return reference is None or task.last_failure > reference


def overlapping(task: TaskRecord, now: float) -> bool:
    """Runs in progress at once now, or an overlap in the last 15 minutes."""
    return task.running > 1 or (
        task.last_overlap is not None and now - task.last_overlap <= OVERLAP_WINDOW)


def late(task: TaskRecord) -> bool:
    """The last run started longer after beat sent it than the tolerance allows."""
    if task.last_start_delay is None or not task.interval:
        return False
    return task.last_start_delay > task.interval * ((task.tolerance or DEFAULT_TOLERANCE) - 1)


def task_state(task: TaskRecord, beat: BeatRecord, now: float) -> str:
    """One task's state, the most urgent first."""
    if overdue(task, now):
        return BEAT_DOWN if beat_down(beat, now) else MISSED
    if failing(task):
        return FAILING
    if overlapping(task, now):
        return OVERLAPPING
    if late(task):
        return LATE
    return WAITING if task.last_run is None else OK
