"""``dead list|show|replay|purge``: the dead-letter stream of given-up tasks (``<prefix>dead``).

Each entry holds the redacted failure ``record`` and a ``replay`` payload: the original
message (task, id, args, kwargs, queue) as the broker held it, unredacted. Only
``dead show --show-args`` prints those arguments; everything else shows the record, or
the arguments passed through the app's redactor.

``replay`` re-sends each message with its original arguments (header
``telemetry_guard_replay_of`` = the original task id) and removes an entry only once
the broker has accepted its message.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click

from .context import EXIT_PROBLEMS, CliContext, UsageError
from .output import emit, emit_one
from .streams import (
    DEAD_COLUMNS,
    Entry,
    GuardStreams,
    RecordFilter,
    Window,
    build_filter,
    build_window,
    check_id,
    cli_context,
    error_row,
    filter_options,
    json_option,
    mask_url,
    wants_json,
)

#: Default ``--limit`` of ``dead list``.
DEFAULT_LIMIT = 50
#: The header a replayed message carries: the id of the task it replays.
REPLAY_HEADER = "telemetry_guard_replay_of"
#: Connecting to the broker before the first replay: a dead broker fails fast.
CONNECT_RETRIES = 2
#: Publishing one replay: one quick retry, then the entry is kept and reported.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.2,
                        "interval_max": 0.5}
NOTIFY_TASK = "telemetry_guard.notify"


@dataclass(frozen=True)
class Replay:
    """A dead letter's message, decoded; ``problem`` says why it cannot be re-sent."""

    task: str | None
    task_id: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    problem: str | None = None

    @classmethod
    def of(cls, entry: Entry) -> Replay:
        """Decode the entry's ``replay`` field (kombu JSON, as the error-log sink wrote it)."""
        if not entry.replay_raw:
            return cls(None, None, [], {}, {}, "no replay payload")
        from kombu.utils.json import loads

        try:
            data = loads(entry.replay_raw)  # type: ignore[no-untyped-call]
        except Exception as exc:
            return cls(None, None, [], {}, {}, f"unreadable replay payload ({type(exc).__name__})")
        if not isinstance(data, dict):
            return cls(None, None, [], {}, {}, "unreadable replay payload")
        task, args, kwargs = data.get("task"), data.get("args", []), data.get("kwargs", {})
        options = data.get("options") if isinstance(data.get("options"), dict) else {}
        task_id = data.get("id") if isinstance(data.get("id"), str) else None
        problem = None
        if data.get("replayable") is False:
            problem = "arguments could not be stored"
        elif not isinstance(task, str) or not task:
            problem = "no task name"
        elif not isinstance(args, list) or not isinstance(kwargs, dict):
            problem = "malformed arguments"
        return cls(task if isinstance(task, str) else None, task_id,
                   args if isinstance(args, list) else [],
                   kwargs if isinstance(kwargs, dict) else {}, options or {}, problem)

    @property
    def replayable(self) -> bool:
        """Whether this message can be sent again."""
        return self.problem is None

    def send_options(self, notification_queue: str) -> dict[str, Any]:
        """``send_task`` routing options: the original queue and priority."""
        queue = self.options.get("queue")
        if not queue and self.task == NOTIFY_TASK:
            queue = notification_queue
        out: dict[str, Any] = {}
        if isinstance(queue, str) and queue:
            out["queue"] = queue
        priority = self.options.get("priority")
        if isinstance(priority, int) and not isinstance(priority, bool):
            out["priority"] = priority
        return out


def dead_row(entry: Entry, *, full: bool = False) -> dict[str, Any]:
    """A ``dead list`` row: the redacted record, never the replay arguments."""
    row = error_row(entry, full=full)
    replay = Replay.of(entry)
    row["replayable"] = replay.replayable if full else ("yes" if replay.replayable else "no")
    if full:
        row["replay_problem"] = replay.problem
    return row


@click.group()
def dead() -> None:
    """List, show, replay and purge dead letters (given-up tasks)."""


def _open(cli: CliContext) -> tuple[GuardStreams, Any]:
    return GuardStreams.for_cli(cli)


@dead.command("list")
@filter_options
@click.option("--limit", type=click.IntRange(min=1), default=DEFAULT_LIMIT, show_default=True,
              help="At most this many entries.")
@json_option
@click.pass_context
def list_dead(ctx: click.Context, tasks: tuple[str, ...], severity: tuple[str, ...],
              min_severity: str | None, exceptions: tuple[str, ...], grep: str | None,
              since: str | None, until: str | None, limit: int, as_json: bool) -> None:
    """Dead letters, newest first."""
    cli = cli_context(ctx)
    flt = build_filter(tasks, severity, min_severity, exceptions, grep)
    window = build_window(since, until, now=time.time())
    streams, _guard = _open(cli)
    as_json = wants_json(cli, as_json)
    with streams.clear_errors():
        rows = [dead_row(e, full=as_json)
                for e in streams.scan(streams.dead_key, window, flt, limit=limit)]
    emit(rows, DEAD_COLUMNS, as_json=as_json)


@dead.command("show")
@click.argument("entry_id", metavar="ID")
@click.option("--show-args", is_flag=True,
              help="Also print the original, UNREDACTED arguments of the replay payload.")
@json_option
@click.pass_context
def show_dead(ctx: click.Context, entry_id: str, show_args: bool, as_json: bool) -> None:
    """One dead letter: its redacted record, and what a replay would send."""
    cli = cli_context(ctx)
    entry_id = _entry_id(entry_id)
    streams, _guard = _open(cli)
    with streams.clear_errors():
        entry = streams.get(streams.dead_key, entry_id)
    if entry is None:
        raise UsageError(f"no dead letter with id {entry_id} in {streams.dead_key}")
    replay = Replay.of(entry)
    shown = error_row(entry, full=True)
    summary: dict[str, Any] = {"task": replay.task, "id": replay.task_id,
                               "options": replay.options, "replayable": replay.replayable}
    if replay.problem:
        summary["problem"] = replay.problem
    if show_args:
        summary.update(args=replay.args, kwargs=replay.kwargs)
    else:
        summary["arguments"] = (f"{len(replay.args)} args, {len(replay.kwargs)} kwargs "
                                "hidden (unredacted): use --show-args")
    shown["replay"] = summary
    emit_one(shown, as_json=wants_json(cli, as_json))


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
@_selection_options
@json_option
@click.pass_context
def replay_dead(ctx: click.Context, ids: tuple[str, ...], tasks: tuple[str, ...],
                severity: tuple[str, ...], min_severity: str | None,
                exceptions: tuple[str, ...], grep: str | None, since: str | None,
                until: str | None, everything: bool, limit: int | None, yes: bool,
                dry_run: bool, as_json: bool) -> None:
    """Send dead letters again with their original arguments, then remove them.

    Select by ID, or by filters (--task X --since 1h), or --all. An entry is removed only
    after the broker accepted its message; one that cannot be sent is kept (exit 1).
    """
    cli = cli_context(ctx)
    as_json = wants_json(cli, as_json)
    selectors = bool(tasks or severity or min_severity or exceptions or grep or since or until)
    if not (ids or selectors or everything):
        raise UsageError("say which dead letters to replay: IDs, filters (--task, --since, "
                         "...) or --all")
    flt = build_filter(tasks, severity, min_severity, exceptions, grep)
    window = build_window(since, until, now=time.time())
    streams, guard = _open(cli)
    with streams.clear_errors():
        entries = _select(streams, ids, flt, window, limit, selectors=selectors or everything)
    redactor = guard.redactor
    plan = [(entry, Replay.of(entry)) for entry in entries]
    rows = [{"id": e.id, "task": r.task, "replay_of": r.task_id,
             "queue": r.send_options(guard.settings.notification_queue).get("queue"),
             "args": redactor.redact(r.args), "kwargs": redactor.redact(r.kwargs),
             "outcome": "would send" if r.replayable else f"skip: {r.problem}"}
            for e, r in plan]
    if dry_run or not rows:
        emit(rows, ("id", "task", "replay_of", "queue", "args", "kwargs", "outcome"),
             as_json=as_json)
        if dry_run:
            click.echo(f"dry run: {sum(r.replayable for _, r in plan)} of {len(plan)} "
                       "would be sent; nothing sent or removed", err=True)
        return
    if not (as_json or yes):
        emit(rows, ("id", "task", "replay_of", "queue", "args", "kwargs", "outcome"),
             as_json=False)
    if not _confirm(f"Replay {sum(r.replayable for _, r in plan)} dead letter(s)?", yes):
        click.echo("aborted: nothing sent", err=True)
        ctx.exit(EXIT_PROBLEMS)
    results = _send_all(cli.get_app(), streams, plan, guard.settings.notification_queue)
    emit(results, ("id", "task", "replay_of", "new_id", "outcome"), as_json=as_json)
    if any(r["outcome"] != "replayed" for r in results):
        ctx.exit(EXIT_PROBLEMS)


def _send_all(app: Any, streams: GuardStreams, plan: Sequence[tuple[Entry, Replay]],
              notification_queue: str) -> list[dict[str, Any]]:
    """Publish each replayable message; XDEL its entry once the broker took it."""
    results: list[dict[str, Any]] = []
    conn = app.connection_for_write()
    try:
        if any(r.replayable for _, r in plan):
            try:
                conn.ensure_connection(max_retries=CONNECT_RETRIES, interval_start=0.2,
                                       interval_step=0.2, interval_max=0.5, timeout=5)
            except Exception as exc:
                raise click.ClickException(
                    f"cannot reach the broker at {mask_url(str(conn.as_uri()))}: {exc}; "
                    "nothing sent") from None
        for entry, replay in plan:
            row = {"id": entry.id, "task": replay.task, "replay_of": replay.task_id,
                   "new_id": None}
            if not replay.replayable:
                results.append({**row, "outcome": f"skipped: {replay.problem}"})
                continue
            try:
                result = app.send_task(
                    replay.task, args=replay.args, kwargs=replay.kwargs, connection=conn,
                    headers={REPLAY_HEADER: replay.task_id}, retry=True,
                    retry_policy=PUBLISH_RETRY_POLICY, add_to_parent=False,
                    **replay.send_options(notification_queue))
            except Exception as exc:
                results.append({**row, "outcome": f"not sent: {type(exc).__name__}: {exc}"})
                continue
            row["new_id"] = result.id
            try:
                with streams.clear_errors():
                    streams.delete(streams.dead_key, [entry.id])
            except click.ClickException as exc:
                results.append({**row, "outcome": f"sent, not removed: {exc.message}"})
                continue
            results.append({**row, "outcome": "replayed"})
    finally:
        conn.release()
    return results


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
               before: str | None, everything: bool, yes: bool, dry_run: bool,
               as_json: bool) -> None:
    """Remove dead letters: by ID, by --task and/or --older-than 7d, or --all."""
    cli = cli_context(ctx)
    as_json = wants_json(cli, as_json)
    selectors = bool(tasks or before)
    if not (ids or selectors or everything):
        raise UsageError("say which dead letters to purge: IDs, --task, --older-than or --all")
    flt = build_filter(tasks)
    window = build_window(None, before, now=time.time())
    streams, _guard = _open(cli)
    with streams.clear_errors():
        entries = _select(streams, ids, flt, window, None, selectors=selectors or everything)
    rows = [dead_row(e, full=as_json) for e in entries]
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
        removed = streams.delete(streams.dead_key, [e.id for e in entries])
    if as_json:
        emit([{"removed": removed}], ("removed",), as_json=True)
    else:
        click.echo(f"removed {removed} dead letter(s)")
