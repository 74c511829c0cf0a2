"""``breakers list|show|open|close|reset|mode|migrate-keys``: circuit breakers as the shared
Redis sees them.

The breakers listed are those the app defines (registered when its module is imported)
and those found in Redis under ``<prefix>breaker:{*}`` (any process of the fleet may have
created them). A breaker found only in Redis is read and commanded through a
``CircuitBreaker(name)`` built here: its state is exact, but its thresholds are not known,
so its ``retry_after`` is not shown.

Commands are state transitions like any other: they go through the breaker's transition
listener, which this process's TelemetryGuard wires to logs, metrics and (for a trip to
open) Sentry and e-mail. Log lines go to stderr; results to stdout.

- ``open NAME``: force the breaker open now; after its ``reset_timeout`` trial calls begin,
  as after any trip. ``open --hold`` sets mode ``forced_open``: open until ``close``.
- ``reset NAME``: close it and clear its counters; the mode is kept (a ``forced_open``,
  ``disabled`` or ``metrics_only`` mode stays).
- ``close NAME``: like ``reset``, and also lifts a ``forced_open`` mode (back to ``normal``),
  so calls flow again. ``disabled`` and ``metrics_only`` are kept: use ``mode``.
- ``mode NAME MODE``: set the mode fleet-wide (normal, disabled, forced_open, metrics_only).

A breaker whose hash holds values no breaker writes (an unknown state or mode, ``nan``,
``1e300``, text counts) is listed with state ``invalid``, the fields at fault and the raw hash
(escaped, cut), and the command exits 1; workers fall back as during a Redis outage until
``reset`` (or ``close``, ``open``, ``mode``) rewrites it.

Workers keep a cached view of each breaker: a worker that last saw the breaker closed
admits one more call per process before it learns of ``open``; a worker that saw it open
re-reads it at least every second after ``close``/``reset``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import click
import redis

from ..breaker import CircuitBreaker
from ..breaker.state import CLOSED, FORCED_OPEN, MODES, NORMAL, OPEN
from ..stores.redis_client import mask_url
from .breaker_index import BreakerIndex, RedisUnavailable
from .context import EXIT_PROBLEMS, UsageError, cli_context, json_option, route_logs_to_stderr
from .output import emit, emit_one, printable

#: Columns of the ``list`` table.
COLUMNS = ("breaker", "state", "mode", "failures", "failure_rate", "retry_after", "permits",
           "generation", "source")
#: State shown for a breaker whose stored hash holds values no breaker writes.
INVALID = "invalid"


def load_guard(ctx: click.Context) -> Any:
    """The app's TelemetryGuard, which wires the breakers; logs go to stderr from here on."""
    guard = cli_context(ctx).guard()
    route_logs_to_stderr()
    return guard


# -- rows --------------------------------------------------------------------------------

def describe(index: BreakerIndex, breaker: CircuitBreaker, source: str) -> dict[str, Any]:
    """One breaker as a row: its state from its store, and what is known of its set-up."""
    row: dict[str, Any] = {"breaker": breaker.name, "source": source,
                           "storage": breaker.storage}
    if breaker.storage != "redis":
        row.update(state=None, mode=None, note="state kept in each process (storage='memory')")
        return row
    if index.url_of(breaker) is None:
        row.update(state=None, mode=None, note="no Redis configured")
        return row
    try:
        # read with the CLI's client first: the store would answer from its local fallback
        problems, raw = index.invalid_fields(breaker)
    except RedisUnavailable as exc:
        row.update(state=None, mode=None, error=exc.message)
        return row
    except redis.RedisError as exc:
        row.update(state=None, mode=None, error=f"cannot read Redis at "
                   f"{mask_url(index.url_of(breaker))}: {type(exc).__name__}: {exc}")
        return row
    if problems:
        row.update(state=INVALID, mode=raw.get("mode"), invalid_fields=list(problems), raw=raw,
                   redis=mask_url(index.url_of(breaker)), key=index.key_of(breaker),
                   error=f"its stored state is invalid ({', '.join(problems)}): workers fall back "
                         f"as during a Redis outage; `breakers reset "
                         f"{breaker.name}` repairs it")
        return row
    snap = breaker.snapshot()
    known = source == "app"
    row.update(
        state=snap.state, mode=snap.mode, generation=snap.generation,
        failures=snap.consecutive_failures,
        failure_rate=None if snap.failure_rate is None else round(snap.failure_rate, 4),
        retry_after=round(snap.retry_after, 3) if known else None,
        permits=snap.half_open_permits_in_use,
        opened_at=index.opened_at(breaker),
        redis=mask_url(index.url_of(breaker)), key=index.key_of(breaker))
    if known:
        config = breaker.config
        row.update(failure_threshold=config.failure_threshold,
                   reset_timeout=config.reset_timeout,
                   half_open_max_calls=config.half_open_max_calls,
                   failure_rate_threshold=config.failure_rate_threshold)
    else:
        row["note"] = "found only in Redis: thresholds and retry_after unknown here"
    return row


def _rows(index: BreakerIndex) -> Iterator[dict[str, Any]]:
    for breaker, source in index.every():
        yield describe(index, breaker, source)


# -- commands ----------------------------------------------------------------------------

@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def breakers(ctx: click.Context) -> None:
    """Circuit breakers: state, mode, counters, time until half-open; open, close, reset.

    Without a sub-command: `list`.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_breakers)


@breakers.command(name="list")
@json_option
@click.pass_context
def list_breakers(ctx: click.Context) -> None:
    """Every breaker the app defines or Redis holds, with its shared state."""
    index = BreakerIndex(load_guard(ctx).settings)
    rows = list(_rows(index))
    emit(rows, COLUMNS, as_json=cli_context(ctx).as_json)
    _exit_on_errors(ctx, rows)


@breakers.command()
@click.argument("name")
@json_option
@click.pass_context
def show(ctx: click.Context, name: str) -> None:
    """One breaker in full; retry_after is the seconds until it admits a call again."""
    index = BreakerIndex(load_guard(ctx).settings)
    breaker, source = index.find(name)
    row = describe(index, breaker, source)
    emit_one(row, as_json=cli_context(ctx).as_json)
    _exit_on_errors(ctx, [row])


def _exit_on_errors(ctx: click.Context, rows: list[dict[str, Any]]) -> None:
    """A breaker whose state could not be read: say so on stderr, exit status 1."""
    errors = [row for row in rows if row.get("error")]
    for row in errors:
        click.echo(printable(f"Error: breaker {row['breaker']!r}: {row['error']}"), err=True)
    if errors:
        ctx.exit(EXIT_PROBLEMS)


def _command(ctx: click.Context, name: str, action: str,
             change: Callable[[CircuitBreaker], None],
             expect: Callable[[str | None, str | None], bool]) -> None:
    guard = load_guard(ctx)
    index = BreakerIndex(guard.settings)
    breaker, source = index.find(name)
    if breaker.storage != "redis":
        raise UsageError(f"breaker {name!r} keeps its state in each process "
                         f"(storage='memory'): the CLI cannot change it")
    index.client(index.url_of(breaker))
    before = INVALID if index.invalid_fields(breaker)[0] else breaker.snapshot().state
    change(breaker)
    try:
        state, mode = index.stored_state(breaker)
    except redis.RedisError as exc:
        state, mode = None, f"{type(exc).__name__}: {exc}"
    finally:
        guard.flush(timeout=5.0)
    if not expect(state, mode):
        raise RedisUnavailable(f"breaker {name!r}: {action} did not reach Redis "
                               f"(state {state!r}, mode {mode!r})")
    row = describe(index, breaker, source)
    row = {"action": action, "from_state": before, **row}
    as_json = cli_context(ctx).as_json
    if as_json:
        emit_one(row, as_json=True)
    else:
        emit([row], ("action", "breaker", "from_state", "state", "mode", "retry_after"),
             as_json=False)


@breakers.command(name="open")
@click.argument("name")
@click.option("--hold", is_flag=True,
              help="Stay open (mode forced_open) until `close`, with no trial calls.")
@json_option
@click.pass_context
def open_breaker(ctx: click.Context, name: str, hold: bool) -> None:
    """Force a breaker open fleet-wide; trial calls begin after its reset_timeout.

    With --hold it stays open (mode forced_open) until `close`.
    """
    def change(breaker: CircuitBreaker) -> None:
        if hold:
            breaker.set_mode(FORCED_OPEN)
        else:
            breaker.force_open()

    _command(ctx, name, "hold_open" if hold else "open", change,
             lambda state, mode: state == OPEN and (not hold or mode == FORCED_OPEN))


@breakers.command(name="close")
@click.argument("name")
@json_option
@click.pass_context
def close_breaker(ctx: click.Context, name: str) -> None:
    """Close a breaker and clear its counters; also lifts a forced_open mode.

    Modes `disabled` and `metrics_only` are kept (see `mode`).
    """
    def change(breaker: CircuitBreaker) -> None:
        if breaker.mode == FORCED_OPEN:
            breaker.set_mode(NORMAL)
        breaker.reset()

    _command(ctx, name, "close", change, lambda state, mode: state in (None, CLOSED))


@breakers.command(name="reset")
@click.argument("name")
@json_option
@click.pass_context
def reset_breaker(ctx: click.Context, name: str) -> None:
    """Close a breaker and clear its counters; its mode is kept.

    A breaker held open (mode forced_open) keeps rejecting calls: use `close`.
    """
    _command(ctx, name, "reset", CircuitBreaker.reset,
             lambda state, mode: state in (None, CLOSED))


@breakers.command(name="mode")
@click.argument("name")
@click.argument("mode", type=click.Choice(MODES))
@json_option
@click.pass_context
def set_mode(ctx: click.Context, name: str, mode: str) -> None:
    """Set a breaker's mode fleet-wide: normal, disabled, forced_open or metrics_only."""
    _command(ctx, name, f"mode_{mode}", lambda breaker: breaker.set_mode(mode),
             lambda state, stored_mode: (stored_mode or NORMAL) == mode)


@breakers.command(name="migrate-keys")
@json_option
@click.pass_context
def migrate_keys(ctx: click.Context) -> None:
    """Move breaker state from the layout before 0.2 (`<prefix>breaker:NAME`) to the
    hash-tagged one (`<prefix>breaker:{NAME}`); breakers already moved keep their state."""
    from ..breaker.key_migration import migrate_breaker_keys

    index = BreakerIndex(cli_context(ctx).settings())
    client = index.client()
    try:
        done = migrate_breaker_keys(client, index.key_prefix)
    except redis.RedisError as exc:
        raise RedisUnavailable(f"cannot migrate breaker keys at {mask_url(index.redis_url)}: "
                               f"{type(exc).__name__}: {exc}") from None
    emit_one({"moved": done.moved, "kept_newer": done.kept_newer,
              "unmovable": done.unmovable, "redis": mask_url(index.redis_url)},
             as_json=cli_context(ctx).as_json)


__all__ = ["breakers", "load_guard"]
