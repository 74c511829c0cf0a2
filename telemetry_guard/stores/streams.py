"""The error-log and dead-letter streams in Redis: pages read, pre-checked or counted there.

Each reply is decoded here into a named structure (:class:`StreamEntry`, :class:`Page`,
:class:`CountPage`) before anything reads it. What to look for is the caller's business:
this module takes byte needles and stream-ID bounds, and knows no filter or command.
Redis errors are raised as redis-py raises them, except a script Redis refuses to run
(scripting disabled or unsupported), which is :class:`ScriptsUnavailable`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from .dead_letters import TASK_FIELD, remove_dead_letters
from .keys import indexed_since_key
from .scripts import bind

_TASK_FIELD = TASK_FIELD.encode()


class StreamEntry(NamedTuple):
    """One stream entry as stored: its ID, ``record`` bytes, ``replay`` bytes, ``task`` field."""

    id: str
    record: bytes
    replay: bytes | None = None
    task: str | None = None


class Page(NamedTuple):
    """One page of a scan: how many entries Redis read, the last one's ID, those sent back."""

    scanned: int
    edge: str | None
    entries: list[StreamEntry]


class CountGroup(NamedTuple):
    """Entries of one task × exception × severity counted inside Redis, with first/last ID."""

    task: str
    exception: str
    severity: str
    count: int
    first_id: str
    last_id: str


class CountPage(NamedTuple):
    """One page counted inside Redis: the groups, and the entries it could not read simply."""

    scanned: int
    edge: str | None
    groups: list[CountGroup]
    odd: list[StreamEntry]


class ScriptsUnavailable(Exception):
    """Redis refused to run a script (scripting disabled or unsupported): read pages whole."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_items(items: Iterable[tuple[Any, Mapping[Any, Any]]]) -> list[StreamEntry]:
    """Entries of an XRANGE/XREVRANGE/XREAD reply (bytes, as redis-py returns them)."""
    out = []
    for entry_id, fields in items:
        raw = fields.get(b"record", b"")
        task = fields.get(_TASK_FIELD)
        out.append(StreamEntry(_text(entry_id),
                               raw if isinstance(raw, bytes) else str(raw).encode(),
                               fields.get(b"replay"),
                               task.decode("utf-8", "replace") if isinstance(task, bytes)
                               else None))
    return out


class StreamStore:
    """Pages, single entries and deletions of streams, through one client."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._precheck = bind(client, "stream_precheck")
        self._count = bind(client, "stream_count")

    def page(self, key: str, upper: str, lower: str, count: int, *,
             newest_first: bool) -> Page:
        """Up to ``count`` entries between the bounds, read whole."""
        if newest_first:
            items = self.client.xrevrange(key, upper, lower, count=count)
        else:
            items = self.client.xrange(key, lower, upper, count=count)
        entries = decode_items(items)
        return Page(len(items), entries[-1].id if entries else None, entries)

    def prechecked_page(self, key: str, upper: str, lower: str, count: int, *,
                        newest_first: bool, grep: bytes | None,
                        needles: Sequence[Sequence[bytes]], indexes: Sequence[str] = ()
                        ) -> Page:
        """A page read inside Redis; back come only entries holding one needle of each group
        and, with ``grep``, containing it lower-cased (or a ``\\u`` escape).

        With ``indexes`` (streams of entry ids, such as each task's index of the error log)
        the page is ``count`` of their ids, merged in order, and only those entries are read.
        """
        import redis

        args: list[Any] = [upper, lower, count, int(newest_first), grep or b"", len(needles)]
        for group in needles:
            args += [len(group), *group]
        try:
            reply = self._precheck(keys=[key, *indexes], args=args)
        except redis.ResponseError as exc:
            raise ScriptsUnavailable(str(exc)) from None
        scanned, edge, *found = reply  # then id, record, replay of each candidate
        return Page(int(scanned), _text(edge) if edge else None,
                    [StreamEntry(_text(found[i]), found[i + 1], found[i + 2])
                     for i in range(0, len(found), 3)])

    def count_page(self, key: str, upper: str, lower: str, count: int) -> CountPage:
        """A page, newest first, counted by task × exception × severity inside Redis."""
        import redis

        try:
            scanned, edge, groups, odd = self._count(keys=[key], args=[upper, lower, count])
        except redis.ResponseError as exc:
            raise ScriptsUnavailable(str(exc)) from None
        return CountPage(
            int(scanned), _text(edge) if edge else None,
            [CountGroup(_text(task), _text(exc), _text(sev), int(n), _text(first), _text(last))
             for task, exc, sev, n, first, last in groups],
            [StreamEntry(_text(odd[i]), odd[i + 1] or b"") for i in range(0, len(odd), 2)])

    def get(self, key: str, entry_id: str) -> StreamEntry | None:
        """The entry with this ID, or None."""
        entries = decode_items(self.client.xrange(key, entry_id, entry_id, count=1))
        return entries[0] if entries else None

    def first_id(self, key: str) -> str | None:
        """The oldest entry's ID (None when the stream is empty)."""
        items = self.client.xrange(key, "-", "+", count=1)
        return _text(items[0][0]) if items else None

    def indexed_since(self, key: str) -> str | None:
        """The ID from which every entry of ``key`` is in its task's index (None: none is)."""
        value = self.client.get(indexed_since_key(key))
        return None if value is None else _text(value)

    def last_id(self, key: str) -> str:
        """The newest entry's ID (``0-0`` when the stream is empty)."""
        items = self.client.xrevrange(key, "+", "-", count=1)
        return _text(items[0][0]) if items else "0-0"

    def follow(self, key: str, after: str, *, count: int,
               block_ms: int = 1000) -> Iterator[list[StreamEntry]]:
        """Batches of entries newer than ``after`` as they arrive (an empty batch per idle wait)."""
        while True:
            reply = self.client.xread({key: after}, count=count, block=block_ms)
            if not reply:
                yield []
                continue
            # RESP2: [[key, entries]]; RESP3: {key: [entries]}
            items = next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
            entries = decode_items(items)
            after = entries[-1].id
            yield entries

    def delete(self, key: str, entry_ids: Sequence[str], *, batch: int) -> int:
        """XDEL in batches; how many entries were removed."""
        removed = 0
        for start in range(0, len(entry_ids), batch):
            removed += int(self.client.xdel(key, *entry_ids[start:start + batch]))
        return removed

    def delete_dead(self, dead_key: str, entries: Sequence[tuple[str, tuple[str, ...]]], *,
                    batch: int) -> int:
        """Remove dead letters ``(id, tasks whose index may hold it)`` with their index ids and
        any replay claim, in batches."""
        removed = 0
        for start in range(0, len(entries), batch):
            removed += remove_dead_letters(self.client, dead_key,
                                           list(entries[start:start + batch]))
        return removed
