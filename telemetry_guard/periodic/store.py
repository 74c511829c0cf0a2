"""The shared periodic state in Redis: registered entries, runs, beat's heartbeat, claims.

Keys (``<prefix>`` is the guard's key prefix):

- ``<prefix>periodic:{<task>}`` hash: ``schedule``, ``interval``, ``tolerance``,
  ``monitored_since``, ``last_run``, ``last_success``, ``last_failure``,
  ``last_start_delay``, ``overlaps``, ``last_overlap``; ``missed_after`` (the deadline
  beat computed from the schedule) and ``missed_after_anchor`` (the time it counted from);
- ``<prefix>periodic:{<task>}:running`` sorted set: run id → start time (same hash tag, so
  a script touches one cluster slot);
- ``<prefix>periodic:tasks`` set: the registered task names;
- ``<prefix>periodic:beat`` hash: ``heartbeat``, ``interval``, ``started``;
- claims (``SET NX``) that a missed window or a beat outage was told.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..stores.redis_client import redis_client
from ..stores.scripts import ScriptCall, bind, run_batch
from .schedule import PeriodicEntry

#: Runs older than this many intervals are stale (their worker died) and dropped.
STALE_INTERVALS = 10
#: Seconds a "told" claim is kept: the same missed window or outage is told once.
CLAIM_TTL = 7 * 86400


@dataclass(frozen=True)
class TaskRecord:
    """What Redis holds about one registered periodic task."""

    task: str
    schedule: str = ""
    interval: float | None = None
    tolerance: float | None = None
    monitored_since: float | None = None
    last_run: float | None = None
    last_success: float | None = None
    last_failure: float | None = None
    last_start_delay: float | None = None
    overlaps: int = 0
    last_overlap: float | None = None
    running: int = 0
    #: The deadline after which the task is missed; None when none was computed for the
    #: current baseline (a run since: beat computes the next one at its next heartbeat).
    missed_after: float | None = None


@dataclass(frozen=True)
class BeatRecord:
    """Beat's heartbeat: when it last beat, how often it beats, when it started."""

    heartbeat: float | None = None
    interval: float | None = None
    started: float | None = None


@dataclass(frozen=True)
class Snapshot:
    """Everything at one moment: beat and each registered task."""

    beat: BeatRecord
    tasks: list[TaskRecord] = field(default_factory=list)
    now: float = 0.0


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _fresh_deadline(fields: dict[str, Any], last_run: float | None,
                    monitored_since: float | None) -> float | None:
    """The stored deadline when it counts from the current baseline (or later), else None."""
    deadline = _number(fields.get("missed_after"))
    anchor = _number(fields.get("missed_after_anchor"))
    baseline = last_run if last_run is not None else monitored_since
    if deadline is None or anchor is None or (baseline is not None and anchor < baseline):
        return None
    return deadline


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class PeriodicStore:
    """Reads and writes the periodic state of one Redis and key prefix."""

    def __init__(self, redis_url: str, key_prefix: str = "telemetry_guard:") -> None:
        self.redis_url = redis_url
        self.base = key_prefix + "periodic"
        self.index_key = self.base + ":tasks"
        self.beat_key = self.base + ":beat"

    @property
    def client(self) -> Any:
        """This process's client of the guard's Redis."""
        return redis_client(self.redis_url)

    def task_key(self, task: str) -> str:
        """The hash of ``task`` (hash-tagged by the task name)."""
        return f"{self.base}:{{{task}}}"

    def running_key(self, task: str) -> str:
        """The runs of ``task`` in progress."""
        return self.task_key(task) + ":running"

    # -- beat ---------------------------------------------------------------------------
    def register(self, entries: Sequence[PeriodicEntry], *, now: float | None = None,
                 replace: bool = True) -> None:
        """Register beat's entries; ``replace``: tasks no longer scheduled leave the index."""
        now = time.time() if now is None else now
        client = self.client
        names = {entry.task for entry in entries}
        pipe = client.pipeline(transaction=False)
        for entry in entries:
            key = self.task_key(entry.task)
            pipe.hset(key, mapping={"schedule": entry.schedule, "interval": entry.interval,
                                    "tolerance": entry.tolerance})
            pipe.hsetnx(key, "monitored_since", now)
        if names:
            pipe.sadd(self.index_key, *sorted(names))
        pipe.execute()
        if replace:
            gone = {_text(n) for n in client.smembers(self.index_key)} - names
            if gone:
                client.srem(self.index_key, *sorted(gone))

    def beat(self, interval: float, *, started: float | None = None,
             now: float | None = None) -> None:
        """Beat's heartbeat (and, when it starts, its start time)."""
        mapping: dict[str, float] = {"heartbeat": time.time() if now is None else now,
                                     "interval": interval}
        if started is not None:
            mapping["started"] = started
        self.client.hset(self.beat_key, mapping=mapping)

    # -- workers ------------------------------------------------------------------------
    def start_call(self, client: Any, task: str, run_id: str, at: float,
                   delay: float | None) -> ScriptCall:
        """The script call recording a run's start."""
        return (bind(client, "periodic_start"), (self.task_key(task), self.running_key(task)),
                (run_id, repr(at), "" if delay is None else repr(max(delay, 0.0)),
                 STALE_INTERVALS))

    def end_call(self, client: Any, task: str, run_id: str, at: float,
                 outcome: str) -> ScriptCall:
        """The script call recording a run's end: ``success``, ``failure`` or ``retry``."""
        field_name = {"success": "last_success", "failure": "last_failure"}.get(outcome, "")
        return (bind(client, "periodic_end"), (self.task_key(task), self.running_key(task)),
                (run_id, repr(at), field_name))

    def write(self, records: Iterable[tuple[str, str, str, float, float | None]]) -> None:
        """Write run records ``(kind, task, run id, time, delay)``, kind ``start`` or an
        end outcome; raises on a failed call (the writer reports it)."""
        client = self.client
        calls = [self.start_call(client, task, run_id, at, extra) if kind == "start"
                 else self.end_call(client, task, run_id, at, kind)
                 for kind, task, run_id, at, extra in records]
        for reply in run_batch(client, calls):
            if isinstance(reply, Exception):
                raise reply

    def baselines(self, tasks: Sequence[str]) -> dict[str, tuple[float | None, float | None]]:
        """``task → (last_run, monitored_since)``, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for task in tasks:
            pipe.hmget(self.task_key(task), "last_run", "monitored_since")
        replies = pipe.execute() if tasks else []
        return {task: (_number(last_run), _number(since))
                for task, (last_run, since) in zip(tasks, replies, strict=True)}

    def set_deadlines(self, deadlines: dict[str, tuple[float, float]]) -> None:
        """Store each task's ``(deadline, anchor)`` as ``missed_after`` and
        ``missed_after_anchor``."""
        if not deadlines:
            return
        pipe = self.client.pipeline(transaction=False)
        for task, (deadline, anchor) in deadlines.items():
            pipe.hset(self.task_key(task), mapping={"missed_after": repr(deadline),
                                    "missed_after_anchor": repr(anchor)})
        pipe.execute()

    def task_names(self) -> set[str]:
        """The registered periodic task names."""
        return {_text(n) for n in self.client.smembers(self.index_key)}

    # -- readers ------------------------------------------------------------------------
    def snapshot(self, now: float | None = None) -> Snapshot:
        """Beat's heartbeat and every registered task's record, in two round trips."""
        now = time.time() if now is None else now
        client = self.client
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(self.beat_key)
        pipe.smembers(self.index_key)
        beat_raw, names_raw = pipe.execute()
        beat = {_text(k): _number(v) for k, v in (beat_raw or {}).items()}
        names = sorted(_text(n) for n in names_raw or ())
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.task_key(name))
            pipe.zrange(self.running_key(name), 0, -1, withscores=True)
        replies = pipe.execute() if names else []
        tasks = [self._task_record(name, replies[2 * i], replies[2 * i + 1], now)
                 for i, name in enumerate(names)]
        return Snapshot(BeatRecord(beat.get("heartbeat"), beat.get("interval"),
                                   beat.get("started")), tasks, now)

    @staticmethod
    def _task_record(name: str, raw: dict[Any, Any], running: list[tuple[Any, float]],
                     now: float) -> TaskRecord:
        fields = {_text(k): v for k, v in (raw or {}).items()}
        interval = _number(fields.get("interval"))
        horizon = now - (interval or 3600.0) * STALE_INTERVALS
        last_run = _number(fields.get("last_run"))
        monitored_since = _number(fields.get("monitored_since"))
        return TaskRecord(
            task=name, schedule=_text(fields.get("schedule", b"")),
            interval=interval, tolerance=_number(fields.get("tolerance")),
            monitored_since=monitored_since, last_run=last_run,
            last_success=_number(fields.get("last_success")),
            last_failure=_number(fields.get("last_failure")),
            last_start_delay=_number(fields.get("last_start_delay")),
            overlaps=int(_number(fields.get("overlaps")) or 0),
            last_overlap=_number(fields.get("last_overlap")),
            running=sum(1 for _, score in running or () if score >= horizon),
            missed_after=_fresh_deadline(fields, last_run, monitored_since))

    # -- telling once -------------------------------------------------------------------
    def claim_missed(self, task: str, baseline: float) -> bool:
        """True for the one caller that tells ``task`` missed since ``baseline``."""
        key = f"{self.task_key(task)}:missed:{baseline!r}"
        return bool(self.client.set(key, "1", nx=True, ex=CLAIM_TTL))

    def claim_beat_down(self, heartbeat: float) -> bool:
        """True for the one caller that tells the beat outage after ``heartbeat``."""
        key = f"{self.beat_key}:down:{heartbeat!r}"
        return bool(self.client.set(key, "1", nx=True, ex=CLAIM_TTL))
