"""``breakers list|show|open|close|reset|mode``: circuit breakers as the shared Redis sees them.

The breakers listed are those the app defines (registered when its module is imported)
and those found in Redis under ``<prefix>breaker:*`` (any process of the fleet may have
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

import datetime as dt
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click
import redis

from ..breaker import CircuitBreaker, all_breakers, get_breaker
from ..breaker.redis_hash import FIELDS, stored_problems
from ..breaker.state import CLOSED, FORCED_OPEN, MODES, NORMAL, OPEN
from ..stores.redis_client import mask_url, new_redis_client
from .context import EXIT_PROBLEMS, UsageError, cli_context, json_option, route_logs_to_stderr
from .output import emit, emit_one, printable

if TYPE_CHECKING:
    from ..integration.config import Settings

#: Seconds the CLI's own Redis client waits to connect and for each reply.
REDIS_TIMEOUT = 3.0
#: Columns of the ``list`` table.
COLUMNS = ("breaker", "state", "mode", "failures", "failure_rate", "retry_after", "permits",
           "generation", "source")
#: Keys per SCAN step.
SCAN_COUNT = 500
#: State shown for a breaker whose stored hash holds values no breaker writes.
INVALID = "invalid"
#: Of an invalid hash, at most this many fields are shown, each cut to ``RAW_VALUE_CHARS``.
RAW_FIELDS = 32
RAW_VALUE_CHARS = 64


#: Breakers this module built for names found only in Redis (they register themselves, but
#: stay "redis" breakers whose thresholds are unknown).
_built: dict[str, CircuitBreaker] = {}


class RedisUnavailable(click.ClickException):
    """The shared breaker state cannot be read or changed: exit code 1."""

    exit_code = EXIT_PROBLEMS


def load_guard(ctx: click.Context) -> Any:
    """The app's TelemetryGuard, which wires the breakers; logs go to stderr from here on."""
    guard = cli_context(ctx).guard()
    route_logs_to_stderr()
    return guard


# -- finding breakers ------------------------------------------------------------------------

class BreakerIndex:
    """The breakers the app defines and those found in the shared Redis."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis_url: str | None = settings.redis_url
        self.key_prefix: str = settings.key_prefix
        self._client: redis.Redis | None = None
        #: URLs found unreachable, with the error, so each is tried once.
        self._down: dict[str, str] = {}

    def client(self, url: str | None = None) -> redis.Redis:
        """A Redis client for ``url`` (default: the guard's), checked with PING."""
        url = url or self.redis_url
        if url is None:
            raise UsageError("no Redis configured (telemetry_guard_redis_url, or a Redis "
                             "broker): breaker state is not shared")
        if self._client is not None and url == self.redis_url:
            return self._client
        if url in self._down:
            raise RedisUnavailable(self._down[url])
        client = new_redis_client(url, timeout=REDIS_TIMEOUT)
        try:
            client.ping()
        except redis.RedisError as exc:
            self._down[url] = (f"cannot reach Redis at {mask_url(url)}: "
                               f"{type(exc).__name__}: {exc}")
            raise RedisUnavailable(self._down[url]) from None
        if url == self.redis_url:
            self._client = client
        return client

    def url_of(self, breaker: CircuitBreaker) -> str | None:
        """The Redis URL a breaker's state lives in."""
        return breaker.redis_url or self.redis_url

    def key_of(self, breaker: CircuitBreaker) -> str:
        """The Redis hash holding a breaker's state."""
        return f"{breaker.key_prefix}breaker:{breaker.name}"

    def in_redis(self) -> list[str]:
        """Names of breakers whose state hash exists under the guard's prefix."""
        if self.redis_url is None:
            return []
        client = self.client()
        base = f"{self.key_prefix}breaker:"
        pattern = _glob_escape(base) + "*"
        try:
            keys = list(client.scan_iter(match=pattern, count=SCAN_COUNT))
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.type(key)
            types = pipe.execute()
        except redis.RedisError as exc:
            raise RedisUnavailable(f"cannot scan Redis at {mask_url(self.redis_url)}: "
                                   f"{type(exc).__name__}: {exc}") from None
        names = []
        for key, kind in zip(keys, types, strict=True):
            # the :permits zset and :window bitmap of each breaker are not hashes
            if kind in (b"hash", "hash"):
                names.append(key.decode("utf-8", "replace")[len(base):])
        return sorted(names)

    def every(self) -> list[tuple[CircuitBreaker, str]]:
        """Every breaker with where it is known from: ``app`` or ``redis``."""
        found = {b.name: (b, _source(b)) for b in all_breakers()}
        for name in self.in_redis():
            if name not in found:
                found[name] = (self._build(name), "redis")
        return [found[name] for name in sorted(found)]

    def find(self, name: str) -> tuple[CircuitBreaker, str]:
        """The breaker called ``name``: registered, or existing in Redis; else a usage error."""
        breaker = get_breaker(name)
        if breaker is not None:
            return breaker, _source(breaker)
        if self.redis_url is not None:
            key = f"{self.key_prefix}breaker:{name}"
            try:
                kind = self.client().type(key)
            except redis.RedisError as exc:
                raise RedisUnavailable(f"cannot reach Redis at {mask_url(self.redis_url)}: "
                                       f"{type(exc).__name__}: {exc}") from None
            if kind in (b"hash", "hash"):
                return self._build(name), "redis"
        raise UsageError(f"unknown breaker {name!r}: not defined by the app and not in Redis "
                         f"(try `breakers list`)")

    def _build(self, name: str) -> CircuitBreaker:
        breaker = _built[name] = CircuitBreaker(name, key_prefix=self.key_prefix)
        return breaker

    def opened_at(self, breaker: CircuitBreaker) -> str | None:
        """When the breaker last opened (ISO 8601 UTC, Redis server time), if it is not closed."""
        url = self.url_of(breaker)
        if breaker.storage != "redis" or url is None:
            return None
        try:
            state, opened = self.client(url).hmget(self.key_of(breaker), "state", "opened_at")
        except redis.RedisError:
            return None
        if state in (None, CLOSED.encode()) or not opened:
            return None
        try:
            moment = dt.datetime.fromtimestamp(int(opened) / 1000, dt.timezone.utc)
        except (ValueError, OverflowError, OSError):
            return None
        return moment.isoformat(timespec="milliseconds")

    def invalid_fields(self, breaker: CircuitBreaker) -> tuple[tuple[str, ...], dict[str, str]]:
        """The stored fields a breaker cannot use (none: it is valid), and the hash as stored."""
        client = self.client(self.url_of(breaker))
        pipe = client.pipeline(transaction=False)
        pipe.time()
        pipe.type(self.key_of(breaker))
        pipe.hgetall(self.key_of(breaker))
        (seconds, micros), kind, stored = pipe.execute(raise_on_error=False)
        if kind not in (b"hash", b"none", "hash", "none"):
            return ("type",), {"type": _printable(kind if isinstance(kind, bytes)
                                                  else str(kind).encode())}
        if isinstance(stored, Exception):
            raise stored
        fields = {name: stored.get(name.encode()) for name in FIELDS}
        problems = stored_problems(fields, seconds * 1000 + micros // 1000)
        if not problems:
            return (), {}
        raw = {}
        for name in sorted(stored)[:RAW_FIELDS]:
            raw[_printable(name)] = _printable(stored[name])
        return problems, raw

    def stored_state(self, breaker: CircuitBreaker) -> tuple[str | None, str | None]:
        """State and mode as written in Redis, read with this CLI's own client."""
        state, mode = self.client(self.url_of(breaker)).hmget(
            self.key_of(breaker), "state", "mode")
        return _text(state), _text(mode)


def _printable(value: bytes) -> str:
    """Stored bytes as one line of printable text, escapes for the rest, cut to a bound."""
    text = value.decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)
    return text if len(text) <= RAW_VALUE_CHARS else text[: RAW_VALUE_CHARS - 1] + "…"


def _text(value: bytes | str | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode()
    return value or None


def _source(breaker: CircuitBreaker) -> str:
    return "redis" if _built.get(breaker.name) is breaker else "app"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


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


__all__ = ["breakers", "load_guard"]
