"""The ``errors`` and ``dead`` commands' streams: paged scans, counts, and their shared options.

A scan reads the stream newest first with ``XREVRANGE key <until-ms> <since-ms> COUNT n``
in pages, so a time window bounds it. With a filter that can pre-check, each page is
pre-checked inside Redis (only candidates cross the network), else it is read whole and
pre-checked here; each candidate's JSON is then parsed and matched, and the scan stops at
``--limit``. With tasks named exactly, the error log is read through those tasks' indexes
(only their records are read), back to where indexing began. The queries are
:mod:`.stream_query`; Redis is :mod:`..stores.streams`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import click

from ..stores.keys import index_key
from ..stores.redis_client import mask_url, new_redis_client
from ..stores.streams import Page, ScriptsUnavailable, StreamEntry, StreamStore
from .context import CliContext, UsageError
from .output import printable
from .stream_query import (
    SEVERITIES,
    Entry,
    FailureCounts,
    RecordFilter,
    Window,
    id_ms,
    id_order,
    index_tasks,
    next_id,
    previous_id,
    severities_from,
)

#: Entries read per XREVRANGE/XRANGE round trip once a scan is under way.
PAGE = 1000
#: Entries read by the first round trip of a scan with filters (most answers need no more).
FIRST_PAGE = 200
#: Entries a page pre-checked inside Redis reads (larger pages are slower in Lua; each blocks
#: Redis ~3 ms at 1.7 KB a record). Only candidates are sent back.
SERVER_PAGE = 1000
#: Seconds the CLI's own client waits for a reply (and at most 5 s to connect).
TIMEOUT = 10.0
#: The defaults of a scan: the whole stream, every record.
ALL_TIME, NO_FILTER = Window(), RecordFilter()
F = TypeVar("F", bound=Callable[..., Any])


def _entries(stored: Iterable[StreamEntry]) -> list[Entry]:
    return [Entry(e.id, e.record, e.replay, e.task) for e in stored]


class GuardStreams:
    """The app's error-log and dead-letter streams, read and trimmed with one client."""

    def __init__(self, redis_url: str, key_prefix: str, *, timeout: float = TIMEOUT) -> None:
        self.redis_url = redis_url
        self.errors_key = key_prefix + "errors"
        self.dead_key = key_prefix + "dead"
        self.client: Any = new_redis_client(redis_url, timeout=timeout,
                                            connect_timeout=min(timeout, 5.0))
        self.store = StreamStore(self.client)
        self._use_script = True

    @classmethod
    def for_cli(cls, cli: CliContext) -> GuardStreams:
        """The streams of the CLI's app; one-line errors when they are missing."""
        settings = cli.settings()
        if not settings.redis_url:
            raise UsageError("the app has no telemetry_guard Redis: set "
                             "telemetry_guard_redis_url (or use a Redis broker)")
        return cls(settings.redis_url, settings.key_prefix)

    def scan(self, key: str, window: Window = ALL_TIME, flt: RecordFilter = NO_FILTER, *,
             limit: int | None = None, newest_first: bool = True) -> Iterator[Entry]:
        """Matching entries of ``key`` inside ``window``, paged, stopping after ``limit``."""
        found = 0
        for upper, lower, indexes in self._parts(key, window, flt, newest_first):
            for entry in self._scan(key, upper, lower, flt, indexes, newest_first,
                                    None if limit is None else limit - found):
                yield entry
                found += 1
                if limit is not None and found >= limit:
                    return

    def _parts(self, key: str, window: Window, flt: RecordFilter,
               newest_first: bool) -> list[tuple[str, str, tuple[str, ...]]]:
        """The window's ranges, in scan order, each with the task indexes that cover it.

        Error-log records written since the guard began indexing them (``indexed_since``)
        are found through their tasks' indexes when the filter names its tasks exactly;
        older records (written before an upgrade) are scanned.
        """
        upper, lower = window.upper, window.lower
        tasks = flt.exact_tasks
        since = (self.store.indexed_since(key)
                 if key == self.errors_key and tasks and self._use_script else None)
        if since is None:
            return [(upper, lower, ())]
        parts = []
        first = self.store.first_id(key) or since  # ids older than the log are gone
        start = max(lower, since, first, key=id_order)
        if id_order(start) <= id_order(upper, upper=True):
            parts.append((upper, start, tuple(index_key(key, t) for t in tasks)))
        before = previous_id(since)
        if before is not None and id_order(lower) < id_order(since):
            parts.append((min(upper, before, key=lambda b: id_order(b, upper=True)), lower, ()))
        return parts if newest_first else parts[::-1]

    def _scan(self, key: str, upper: str, lower: str, flt: RecordFilter,
              indexes: tuple[str, ...], newest_first: bool, limit: int | None
              ) -> Iterator[Entry]:
        """Matching entries between two bounds, paged, at most ``limit``."""
        size = (min(limit, PAGE) if limit else PAGE) if flt.empty else FIRST_PAGE
        while True:
            page = self._page(key, upper, lower, size, newest_first, flt, indexes)
            for entry in _entries(page.entries):
                if flt.empty or flt.matches(entry.record):
                    yield entry
            if page.scanned < size or page.edge is None:
                return
            bound = previous_id(page.edge) if newest_first else next_id(page.edge)
            if bound is None:
                return
            if newest_first:
                upper = bound
            else:
                lower = bound
            size = SERVER_PAGE if self._use_script and flt.prechecks else PAGE

    def _page(self, key: str, upper: str, lower: str, count: int, newest_first: bool,
              flt: RecordFilter, indexes: tuple[str, ...] = ()) -> Page:
        """One page: pre-checked inside Redis when the filter can (through ``indexes`` when
        given), else read whole."""
        if (flt.prechecks or indexes) and self._use_script:
            try:
                return self.store.prechecked_page(
                    key, upper, lower, count, newest_first=newest_first,
                    grep=flt.grep_bytes, needles=flt.needles, indexes=indexes)
            except ScriptsUnavailable:  # filter here from now on
                self._use_script = False
        page = self.store.page(key, upper, lower, count, newest_first=newest_first)
        if flt.prechecks:
            return page._replace(entries=[e for e in page.entries if flt.may_match(e.record)])
        return page

    def count(self, key: str, window: Window = ALL_TIME,
              flt: RecordFilter = NO_FILTER) -> FailureCounts:
        """Failures in ``window`` counted by task × exception × severity.

        Without a filter the counting is done inside Redis a page at a time (only the
        groups and records it could not read simply come back); with one, here.
        """
        counts = FailureCounts()
        if not flt.empty or not self._use_script:
            for entry in self.scan(key, window, flt):
                counts.add_entry(entry)
            return counts
        upper, lower = window.upper, window.lower
        while True:
            try:
                page = self.store.count_page(key, upper, lower, SERVER_PAGE)
            except ScriptsUnavailable:  # count here, from the start
                self._use_script = False
                return self.count(key, window, flt)
            for group in page.groups:
                counts.add((group.task, group.exception, group.severity), group.count,
                           id_ms(group.first_id) / 1000, id_ms(group.last_id) / 1000)
            for entry in _entries(page.odd):
                counts.add_entry(entry)
            if page.scanned < SERVER_PAGE or page.edge is None:
                return counts
            bound = previous_id(page.edge)
            if bound is None:
                return counts
            upper = bound

    @contextlib.contextmanager
    def clear_errors(self) -> Iterator[None]:
        """Turn a Redis failure into a one-line error (exit 1), never a traceback."""
        import redis

        try:
            yield
        except redis.ResponseError as exc:
            raise click.ClickException(
                f"Redis refused the request: {printable(str(exc))}") from None
        except redis.RedisError as exc:
            raise click.ClickException(
                f"cannot reach Redis at {printable(str(mask_url(self.redis_url)))}: "
                f"{printable(str(exc))}") from None

    def get(self, key: str, entry_id: str) -> Entry | None:
        """The entry with this ID, or None."""
        stored = self.store.get(key, entry_id)
        return None if stored is None else _entries([stored])[0]

    def last_id(self, key: str) -> str:
        """The newest entry's ID (``0-0`` when the stream is empty)."""
        return self.store.last_id(key)

    def follow(self, key: str, after: str, *, block_ms: int = 1000) -> Iterator[list[Entry]]:
        """Batches of entries newer than ``after`` as they arrive (an empty batch per idle wait)."""
        for batch in self.store.follow(key, after, count=PAGE, block_ms=block_ms):
            yield _entries(batch)

    def delete(self, key: str, entry_ids: Sequence[str]) -> int:
        """XDEL in batches; how many entries were removed."""
        return self.store.delete(key, entry_ids, batch=PAGE)

    def delete_dead(self, entries: Sequence[Entry]) -> int:
        """Remove dead letters with their ids in their tasks' indexes and any replay claim."""
        return self.store.delete_dead(self.dead_key, [(e.id, index_tasks(e)) for e in entries],
                                      batch=PAGE)


# -- shared click options --------------------------------------------------------------
def filter_options(func: F) -> F:
    """``--task --severity --min-severity --exception --grep --since --until``."""
    options = [
        click.option("--task", "tasks", multiple=True, metavar="NAME",
                     help="Only this task (repeatable; globs such as 'shop.*' work)."),
        click.option("--severity", "severity", multiple=True, metavar="LEVEL",
                     help=f"Only exactly this severity ({', '.join(SEVERITIES)}; repeatable)."),
        click.option("--min-severity", metavar="LEVEL", help="This severity and above."),
        click.option("--exception", "exceptions", multiple=True, metavar="NAME",
                     help="Only this exception class (Name or module.Name; repeatable)."),
        click.option("--grep", metavar="TEXT",
                     help="Case-insensitive text in the message, exception or task."),
        click.option("--since", metavar="WHEN",
                     help="From this time: a duration ago (30s, 5m, 1h, 2d) or ISO 8601."),
        click.option("--until", metavar="WHEN", help="Up to this time (same forms as --since)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_filter(tasks: Sequence[str] = (), severity: Sequence[str] = (),
                 min_severity: str | None = None, exceptions: Sequence[str] = (),
                 grep: str | None = None, roots: Sequence[str] = ()) -> RecordFilter:
    """The filter of the shared options (and ``--root``); a one-line usage error on a bad
    severity."""
    try:
        severities = severities_from(severity, min_severity)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return RecordFilter(tuple(tasks), severities, tuple(exceptions), grep or None,
                        tuple(roots))


def build_window(since: str | None, until: str | None, *, now: float) -> Window:
    """The window of ``--since``/``--until``; a one-line usage error when malformed."""
    try:
        return Window.parse(since, until, now=now)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
