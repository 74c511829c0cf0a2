"""``dead list|show|replay|purge``: the dead-letter stream of given-up tasks (``<prefix>dead``).

Each entry holds the redacted failure ``record`` and a ``replay`` payload: the original
message (task, id, args, kwargs, queue) as the broker held it, unredacted. Only
``dead show --show-args`` prints those arguments; everything else shows the record, or
the arguments passed through the app's redactor.

``replay`` re-sends each message with its original arguments (header
``telemetry_guard_replay_of`` = the original task id), at most once:

- only tasks this app registers (never Celery's own ``celery.*`` tasks), and only when
  the stored message names the same task (and task id) as its record; anything else is
  refused, kept, and reported with the reason;
- the queue is the app's routing for the task (``task_routes``, the task's ``queue``
  option, the default queue), or ``--queue``: never the queue stored in the stream;
- each entry is claimed atomically in Redis before its message is sent, so of two
  replays running at once only one sends it; the other reports it ``already replayed``.
  Once the broker accepted the message the entry is removed; if the send fails the claim
  is released and the entry stays for a later replay. A replay that dies between sending
  and removing leaves the claim: the entry stays visible and is never sent again.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click

from ..stores.dead_letters import Claim, DeadLetterClaims
from ..stores.redis_client import mask_url
from .context import EXIT_PROBLEMS, CliContext, UsageError, cli_context, json_option
from .output import emit, emit_one, printable
from .replay import Replay, dead_row, workers_tasks
from .stream_query import DEAD_COLUMNS, Entry, RecordFilter, Window, check_id, error_row
from .streams import GuardStreams, build_filter, build_window, filter_options

#: Default ``--limit`` of ``dead list``.
DEFAULT_LIMIT = 50
#: The header a replayed message carries: the id of the task it replays.
REPLAY_HEADER = "telemetry_guard_replay_of"
#: Connecting to the broker before the first replay: a dead broker fails fast.
CONNECT_RETRIES = 2
#: Publishing one replay: one quick retry, then the entry is kept and reported.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.2,
                        "interval_max": 0.5}
#: The outcome of an entry another replay sent (or is sending).
ALREADY_REPLAYED = "already replayed"
#: Outcomes that need no attention: exit 0.
DONE_OUTCOMES = ("replayed", ALREADY_REPLAYED)


@click.group()
def dead() -> None:
    """List, show, replay and purge dead letters (given-up tasks)."""


def _app_and_tasks(cli: CliContext) -> tuple[Any, Mapping[str, Any]]:
    """The app, and the tasks its workers run (see :func:`.replay.workers_tasks`)."""
    app = cli.get_app()
    return app, workers_tasks(app, cli.settings())


def _redactor(cli: CliContext) -> Any:
    """The app's redactor, as its guard builds it from the settings."""
    from ..core.redact import Redactor

    s = cli.settings()
    return Redactor(keys=s.redact_keys, max_value_chars=s.max_value_chars,
                    max_record_bytes=s.max_record_bytes)


@dead.command("list")
@filter_options
@click.option("--limit", type=click.IntRange(min=1), default=DEFAULT_LIMIT, show_default=True,
              help="At most this many entries.")
@json_option
@click.pass_context
def list_dead(ctx: click.Context, tasks: tuple[str, ...], severity: tuple[str, ...],
              min_severity: str | None, exceptions: tuple[str, ...], grep: str | None,
              since: str | None, until: str | None, limit: int) -> None:
    """Dead letters, newest first."""
    cli = cli_context(ctx)
    flt = build_filter(tasks, severity, min_severity, exceptions, grep)
    window = build_window(since, until, now=time.time())
    streams = GuardStreams.for_cli(cli)
    as_json = cli.as_json
    with streams.clear_errors():
        app, tasks = _app_and_tasks(cli)
        rows = [dead_row(e, full=as_json, app=app, tasks=tasks)
                for e in streams.scan(streams.dead_key, window, flt, limit=limit)]
    emit(rows, DEAD_COLUMNS, as_json=as_json)


@dead.command("show")
@click.argument("entry_id", metavar="ID")
@click.option("--show-args", is_flag=True,
              help="Also print the original, UNREDACTED arguments of the replay payload.")
@json_option
@click.pass_context
def show_dead(ctx: click.Context, entry_id: str, show_args: bool) -> None:
    """One dead letter: its redacted record, and what a replay would send."""
    cli = cli_context(ctx)
    entry_id = _entry_id(entry_id)
    streams = GuardStreams.for_cli(cli)
    with streams.clear_errors():
        entry = streams.get(streams.dead_key, entry_id)
    if entry is None:
        raise UsageError(f"no dead letter with id {entry_id} in {streams.dead_key}")
    replay = Replay.of(entry)
    shown = error_row(entry, full=True)
    app, tasks = _app_and_tasks(cli)
    problem = replay.refusal(entry, app, tasks)
    summary: dict[str, Any] = {"task": replay.task, "id": replay.task_id,
                               "options": replay.options, "replayable": problem is None}
    if problem:
        summary["problem"] = problem
    else:
        summary["queue"] = replay.queue_name(app, None, tasks)
    if show_args:
        summary.update(args=replay.args, kwargs=replay.kwargs)
    else:
        summary["arguments"] = (f"{len(replay.args)} args, {len(replay.kwargs)} kwargs "
                                "hidden (unredacted): use --show-args")
    shown["replay"] = summary
    emit_one(shown, as_json=cli.as_json)


def _entry_id(text: str) -> str:
    try:
        return check_id(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _select(streams: GuardStreams, ids: Sequence[str], flt: RecordFilter, window: Window,
            limit: int | None, *, selectors: bool) -> list[Entry]:
    """Entries named by ID (each must exist), else those the filters select, oldest first."""
    if ids:
        if selectors:
            raise UsageError("give entry IDs or filters (--task, --since, ...), not both")
        entries = []
        for entry_id in dict.fromkeys(_entry_id(i) for i in ids):
            entry = streams.get(streams.dead_key, entry_id)
            if entry is None:
                raise UsageError(f"no dead letter with id {entry_id} in {streams.dead_key}")
            entries.append(entry)
        return sorted(entries, key=lambda e: tuple(int(p) for p in e.id.split("-")))
    return list(streams.scan(streams.dead_key, window, flt, limit=limit, newest_first=False))


def _confirm(question: str, yes: bool) -> bool:
    """Ask on the terminal unless ``--yes``; no answer (no stdin) counts as no."""
    if yes:
        return True
    try:
        return click.confirm(question, default=False, err=True)
    except click.Abort:
        click.echo("", err=True)
        return False


def _selection_options(func: Any) -> Any:
    func = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")(func)
    func = click.option("--dry-run", is_flag=True, help="Show what would be done; change nothing.")(
        func)
    return func


@dead.command("replay")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@filter_options
@click.option("--all", "everything", is_flag=True, help="Every dead letter (no filter).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="At most this many (oldest first).")
@click.option("--queue", metavar="NAME", default=None,
              help="Send to this queue instead of the one the app routes the task to.")
@_selection_options
@json_option
@click.pass_context
def replay_dead(ctx: click.Context, ids: tuple[str, ...], tasks: tuple[str, ...],
                severity: tuple[str, ...], min_severity: str | None,
                exceptions: tuple[str, ...], grep: str | None, since: str | None,
                until: str | None, everything: bool, limit: int | None, queue: str | None,
                yes: bool, dry_run: bool) -> None:
    """Send dead letters again with their original arguments, then remove them.

    Select by ID, or by filters (--task X --since 1h), or --all. Only tasks this app
    registers are sent, to the queue the app routes them to (or --queue). Each entry is
    claimed before it is sent, so it is sent at most once even by replays running at
    once; it is removed after the broker accepted its message. A refused entry or one
    that cannot be sent is kept (exit 1); one another replay took is `already replayed`.
    """
    cli = cli_context(ctx)
    as_json = cli.as_json
    selectors = bool(tasks or severity or min_severity or exceptions or grep or since or until)
    if not (ids or selectors or everything):
        raise UsageError("say which dead letters to replay: IDs, filters (--task, --since, "
                         "...) or --all")
    flt = build_filter(tasks, severity, min_severity, exceptions, grep)
    window = build_window(since, until, now=time.time())
    streams = GuardStreams.for_cli(cli)
    with streams.clear_errors():
        entries = _select(streams, ids, flt, window, limit, selectors=selectors or everything)
    redactor = _redactor(cli)
    app, tasks = _app_and_tasks(cli)
    plan = [Planned(entry, replay, replay.refusal(entry, app, tasks))
            for entry, replay in ((e, Replay.of(e)) for e in entries)]
    sendable = sum(p.refusal is None for p in plan)
    rows = [{"id": p.entry.id, "task": p.replay.task, "replay_of": p.replay.task_id,
             "queue": p.replay.queue_name(app, queue, tasks) if p.refusal is None else None,
             "args": redactor.redact(p.replay.args), "kwargs": redactor.redact(p.replay.kwargs),
             "outcome": "would send" if p.refusal is None else f"refused: {p.refusal}"}
            for p in plan]
    if dry_run or not rows:
        emit(rows, ("id", "task", "replay_of", "queue", "args", "kwargs", "outcome"),
             as_json=as_json)
        if dry_run:
            click.echo(f"dry run: {sendable} of {len(plan)} would be sent; nothing sent or "
                       "removed", err=True)
        return
    if not (as_json or yes):
        emit(rows, ("id", "task", "replay_of", "queue", "args", "kwargs", "outcome"),
             as_json=False)
    if not _confirm(f"Replay {sendable} dead letter(s)?", yes):
        click.echo("aborted: nothing sent", err=True)
        ctx.exit(EXIT_PROBLEMS)
    results = _send_all(app, tasks, streams, plan, queue)
    emit(results, ("id", "task", "replay_of", "queue", "new_id", "outcome"), as_json=as_json)
    if not all(r["outcome"].startswith(DONE_OUTCOMES) for r in results):
        ctx.exit(EXIT_PROBLEMS)


@dataclass(frozen=True)
class Planned:
    """One selected dead letter, its decoded message, and why it is refused (None: sent)."""

    entry: Entry
    replay: Replay
    refusal: str | None


def _claimed_by(claim: Claim) -> str:
    other = claim.other or {}
    at = other.get("at")
    when = (dt.datetime.fromtimestamp(at, dt.timezone.utc).isoformat(timespec="seconds")
            .replace("+00:00", "Z") if isinstance(at, (int, float)) else "?")
    return f"{ALREADY_REPLAYED} (claimed by {other.get('by', '?')} at {when})"


def _send_all(app: Any, tasks: Mapping[str, Any], streams: GuardStreams,
              plan: Sequence[Planned], queue: str | None) -> list[dict[str, Any]]:
    """Claim, publish and remove each sendable entry; see the module's docstring."""
    results: list[dict[str, Any]] = []
    claims = DeadLetterClaims(streams.client, streams.dead_key)
    conn = app.connection_for_write()
    try:
        if any(p.refusal is None for p in plan):
            try:
                conn.ensure_connection(max_retries=CONNECT_RETRIES, interval_start=0.2,
                                       interval_step=0.2, interval_max=0.5, timeout=5)
            except Exception as exc:
                raise click.ClickException(
                    f"cannot reach the broker at {printable(mask_url(str(conn.as_uri())))}: "
                    f"{printable(str(exc))}; "
                    "nothing sent") from None
        for p in plan:
            results.append(_send_one(app, tasks, conn, claims, streams, p, queue))
    finally:
        conn.release()
    return results


def _send_one(app: Any, tasks: Mapping[str, Any], conn: Any, claims: DeadLetterClaims,
              streams: GuardStreams, planned: Planned, queue: str | None) -> dict[str, Any]:
    """One entry: refused, already replayed, not sent (claim released), or replayed."""
    entry, replay = planned.entry, planned.replay
    row: dict[str, Any] = {"id": entry.id, "task": replay.task, "replay_of": replay.task_id,
                           "queue": None, "new_id": None}
    if planned.refusal is not None:
        return {**row, "outcome": f"refused: {planned.refusal}"}
    row["queue"] = replay.queue_name(app, queue, tasks)
    try:
        with streams.clear_errors():
            claim = claims.claim(entry.id)
    except click.ClickException as exc:
        return {**row, "outcome": f"not sent: cannot claim it: {exc.message}"}
    if claim.outcome == "gone":
        return {**row, "outcome": ALREADY_REPLAYED}
    if claim.outcome != "ok":
        return {**row, "outcome": _claimed_by(claim)}
    try:
        result = app.send_task(
            replay.task, args=replay.args, kwargs=replay.kwargs, connection=conn,
            headers={REPLAY_HEADER: replay.task_id}, retry=True,
            retry_policy=PUBLISH_RETRY_POLICY, add_to_parent=False,
            **replay.send_options(app, queue, tasks))
    except Exception as exc:
        try:
            with streams.clear_errors():
                claims.release(entry.id)
        except click.ClickException as error:
            return {**row, "outcome": f"not sent: {type(exc).__name__}: {exc}; the entry "
                                      f"stays claimed (release failed: {error.message})"}
        return {**row, "outcome": f"not sent: {type(exc).__name__}: {exc}"}
    row["new_id"] = result.id
    try:
        with streams.clear_errors():
            claims.sent(entry.id, str(replay.task))
    except click.ClickException as exc:
        return {**row, "outcome": f"sent, not removed (stays claimed, never sent again): "
                                  f"{exc.message}"}
    return {**row, "outcome": "replayed"}


@dead.command("purge")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--task", "tasks", multiple=True, metavar="NAME",
              help="Only this task (repeatable; globs work).")
@click.option("--before", "--older-than", "before", metavar="WHEN",
              help="Only entries older than this: a duration ago (7d) or ISO 8601.")
@click.option("--all", "everything", is_flag=True, help="Every dead letter.")
@_selection_options
@json_option
@click.pass_context
def purge_dead(ctx: click.Context, ids: tuple[str, ...], tasks: tuple[str, ...],
               before: str | None, everything: bool, yes: bool, dry_run: bool) -> None:
    """Remove dead letters: by ID, by --task and/or --older-than 7d, or --all."""
    cli = cli_context(ctx)
    as_json = cli.as_json
    selectors = bool(tasks or before)
    if not (ids or selectors or everything):
        raise UsageError("say which dead letters to purge: IDs, --task, --older-than or --all")
    flt = build_filter(tasks)
    window = build_window(None, before, now=time.time())
    streams = GuardStreams.for_cli(cli)
    with streams.clear_errors():
        entries = _select(streams, ids, flt, window, None, selectors=selectors or everything)
    app, tasks = _app_and_tasks(cli)
    rows = [dead_row(e, full=as_json, app=app, tasks=tasks) for e in entries]
    if dry_run or not rows:
        emit(rows, DEAD_COLUMNS, as_json=as_json)
        if dry_run:
            click.echo(f"dry run: {len(rows)} would be removed; nothing removed", err=True)
        return
    if not (as_json or yes):
        emit(rows, DEAD_COLUMNS, as_json=False)
    if not _confirm(f"Remove {len(rows)} dead letter(s)?", yes):
        click.echo("aborted: nothing removed", err=True)
        ctx.exit(EXIT_PROBLEMS)
    with streams.clear_errors():
        removed = streams.delete_dead(entries)
    if as_json:
        emit([{"removed": removed}], ("removed",), as_json=True)
    else:
        click.echo(f"removed {removed} dead letter(s)")
