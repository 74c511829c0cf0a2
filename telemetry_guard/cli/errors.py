"""``errors list|show|tail|stats``: search and follow the error log (``<prefix>errors``).

Every record in the log was redacted when it was written; these commands print
records as stored and never read the dead-letter stream's unredacted arguments.
"""

from __future__ import annotations

import time

import click

from .context import EXIT_OK, UsageError, cli_context, json_option
from .output import emit, emit_one
from .stream_query import ERROR_COLUMNS, Entry, check_id, error_row, line_for, previous_id
from .streams import GuardStreams, build_filter, build_window, filter_options

#: Default ``--limit`` of ``errors list``.
DEFAULT_LIMIT = 50
#: Default window of ``errors stats``.
DEFAULT_STATS_WINDOW = "1h"
#: Column widths of ``errors tail`` on a terminal (its rows are printed as they come).
TAIL_WIDTHS = {"id": 15, "time": 20, "task": 28, "severity": 8, "exception": 22,
               "decision": 8, "message": 60}


@click.group()
def errors() -> None:
    """Search, show, follow and count the error log."""


@errors.command("list")
@filter_options
@click.option("--root", "roots", multiple=True, metavar="ID",
              help="Only records of the workflow with this root task id (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=DEFAULT_LIMIT, show_default=True,
              help="At most this many records.")
@json_option
@click.pass_context
def list_errors(ctx: click.Context, tasks: tuple[str, ...], severity: tuple[str, ...],
                min_severity: str | None, exceptions: tuple[str, ...], grep: str | None,
                since: str | None, until: str | None, roots: tuple[str, ...],
                limit: int) -> None:
    """Failure records, newest first."""
    cli = cli_context(ctx)
    flt = build_filter(tasks, severity, min_severity, exceptions, grep, roots)
    window = build_window(since, until, now=time.time())
    streams = GuardStreams.for_cli(cli)
    as_json = cli.as_json
    with streams.clear_errors():
        rows = [error_row(e, full=as_json)
                for e in streams.scan(streams.errors_key, window, flt, limit=limit)]
    emit(rows, ERROR_COLUMNS, as_json=as_json)


@errors.command("show")
@click.argument("entry_id", metavar="ID")
@json_option
@click.pass_context
def show_error(ctx: click.Context, entry_id: str) -> None:
    """One record whole, by entry ID (as `errors list` shows it)."""
    cli = cli_context(ctx)
    try:
        entry_id = check_id(entry_id)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    streams = GuardStreams.for_cli(cli)
    with streams.clear_errors():
        entry = streams.get(streams.errors_key, entry_id)
    if entry is None:
        raise UsageError(f"no error-log entry with id {entry_id} in {streams.errors_key}")
    emit_one(error_row(entry, full=True), as_json=cli.as_json)


@errors.command("tail")
@filter_options
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Stop after this many records.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Stop after this many seconds.")
@json_option
@click.pass_context
def tail_errors(ctx: click.Context, tasks: tuple[str, ...], severity: tuple[str, ...],
                min_severity: str | None, exceptions: tuple[str, ...], grep: str | None,
                since: str | None, until: str | None, count: int | None,
                timeout: float | None) -> None:
    """Follow new records as they arrive (from --since, else from now); Ctrl-C stops."""
    cli = cli_context(ctx)
    if until is not None:
        raise UsageError("errors tail follows the log: --until is not an option here "
                         "(use errors list)")
    flt = build_filter(tasks, severity, min_severity, exceptions, grep)
    window = build_window(since, None, now=time.time())
    streams = GuardStreams.for_cli(cli)
    as_json = cli.as_json
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = 0
    try:
        with streams.clear_errors():
            if window.since is None:
                after = streams.last_id(streams.errors_key)
            else:
                after = previous_id(f"{window.lower}-0") or "0-0"
            if not as_json:
                click.echo(line_for({c: c.upper() for c in TAIL_WIDTHS}, TAIL_WIDTHS))
            block_ms = 1000 if timeout is None else max(1, min(1000, int(timeout * 1000)))
            for batch in streams.follow(streams.errors_key, after, block_ms=block_ms):
                for entry in flt.select(batch):
                    _print_tail(entry, as_json)
                    shown += 1
                    if count is not None and shown >= count:
                        return
                if deadline is not None and time.monotonic() >= deadline:
                    return
    except KeyboardInterrupt:
        ctx.exit(EXIT_OK)


def _print_tail(entry: Entry, as_json: bool) -> None:
    if as_json:
        emit([error_row(entry, full=True)], ERROR_COLUMNS, as_json=True)
    else:
        click.echo(line_for(error_row(entry), TAIL_WIDTHS))


@errors.command("stats")
@filter_options
@json_option
@click.pass_context
def error_stats(ctx: click.Context, tasks: tuple[str, ...], severity: tuple[str, ...],
                min_severity: str | None, exceptions: tuple[str, ...], grep: str | None,
                since: str | None, until: str | None) -> None:
    """Counts by task, exception and severity over a window (--since, default 1h)."""
    cli = cli_context(ctx)
    flt = build_filter(tasks, severity, min_severity, exceptions, grep)
    window = build_window(since or DEFAULT_STATS_WINDOW, until, now=time.time())
    streams = GuardStreams.for_cli(cli)
    with streams.clear_errors():
        rows = streams.count(streams.errors_key, window, flt).rows()
    emit(rows, ("count", "task", "exception", "severity", "first", "last"),
         as_json=cli.as_json)
