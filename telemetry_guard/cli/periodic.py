"""``periodic``: each periodic task's schedule, last run, last success and state; beat's status.

The states are the shared contract's (``telemetry_guard.periodic.states``), read from the
state beat and the workers keep in the guard's Redis.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import click

from .context import EXIT_PROBLEMS, UsageError, cli_context, json_option
from .output import emit, printable, to_json

COLUMNS = ("task", "schedule", "last_run", "last_success", "state")


class RedisUnavailable(click.ClickException):
    """The periodic state cannot be read: exit code 1."""

    exit_code = EXIT_PROBLEMS


def _when(timestamp: float | None, now: float) -> str | None:
    """A time as UTC and its age: ``2026-01-01 10:00:00 (12s ago)``."""
    if timestamp is None:
        return None
    shown = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return f"{shown:%Y-%m-%d %H:%M:%S} ({max(now - timestamp, 0.0):.1f}s ago)"


def beat_line(beat: dict[str, Any]) -> str:
    """The header: ``beat: alive (last heartbeat 0.4s ago, every 10s)``."""
    if beat["heartbeat"] is None:
        return "beat: never seen (no heartbeat in Redis)"
    return (f"beat: {beat['status']} (last heartbeat {beat['heartbeat_age_s']:.1f}s ago, "
            f"every {beat['heartbeat_interval_s']:g}s)")


@click.command()
@json_option
@click.pass_context
def periodic(ctx: click.Context) -> None:
    """Periodic tasks: schedule, last run, last success, state; beat's status."""
    import redis

    from ..periodic.states import beat_status, task_state
    from ..periodic.store import PeriodicStore

    cli = cli_context(ctx)
    settings = cli.settings()
    if not settings.redis_url:
        raise UsageError("periodic monitoring needs the guard's Redis "
                         "(telemetry_guard_redis_url)")
    store = PeriodicStore(settings.redis_url, settings.key_prefix)
    try:
        snapshot = store.snapshot(time.time())
    except redis.RedisError as exc:
        raise RedisUnavailable(f"cannot read the periodic state: {type(exc).__name__}: "
                               f"{exc}") from None
    now, beat_record = snapshot.now, snapshot.beat
    beat = {"status": beat_status(beat_record, now), "heartbeat": beat_record.heartbeat,
            "heartbeat_age_s": (None if beat_record.heartbeat is None
                                else round(now - beat_record.heartbeat, 3)),
            "heartbeat_interval_s": beat_record.interval}
    rows = []
    for task in snapshot.tasks:
        row: dict[str, Any] = {
            "task": task.task, "schedule": task.schedule, "state": task_state(task, beat_record,
                                                                              now)}
        if cli.as_json:
            row.update(interval_s=task.interval, tolerance=task.tolerance,
                       monitored_since=task.monitored_since, last_run=task.last_run,
                       last_success=task.last_success, last_failure=task.last_failure,
                       last_start_delay_s=task.last_start_delay, running=task.running,
                       overlaps=task.overlaps, missed_after=task.missed_after)
        else:
            row.update(last_run=_when(task.last_run, now),
                       last_success=_when(task.last_success, now))
        rows.append(row)
    if cli.as_json:
        click.echo(to_json({"beat": beat}))
    else:
        click.echo(printable(beat_line(beat)))
    emit(rows, COLUMNS, as_json=cli.as_json)
