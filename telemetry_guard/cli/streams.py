"""Reading the error-log and dead-letter streams: time windows, filters, paged scans.

The top half is pure (parsing ``--since``/``--until``, stream IDs, the record filter and
its cheap pre-check on raw bytes, table rows); the bottom half talks to Redis
(:class:`GuardStreams`) and holds the click options the ``errors`` and ``dead`` commands share.

A scan reads the stream newest first with ``XREVRANGE key <until-ms> <since-ms> COUNT n``
in pages, so a time window bounds it; each raw record is tested with substring checks
that every match must pass before its JSON is parsed, and the scan stops at ``--limit``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fnmatch
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click

from ..classify import Severity
from ..dead_letters import TASK_FIELD, remove_dead_letters
from .context import CliContext, UsageError
from .output import cell_text, printable

#: Severity labels, lowest first.
SEVERITIES: tuple[str, ...] = tuple(s.label for s in sorted(Severity))
#: Seconds per duration unit: ``30s``, ``5m``, ``1h``, ``2d``, ``1w`` (and combined: ``1h30m``).
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The largest sequence number of a stream ID.
MAX_SEQ = 2**64 - 1
#: Entries read per XREVRANGE/XRANGE round trip once a scan is under way.
PAGE = 1000
#: Entries read by the first round trip of a scan with filters (most answers need no more).
FIRST_PAGE = 200
#: Entries a page pre-checked inside Redis reads (larger pages are slower in Lua; each blocks
#: Redis ~3 ms at 1.7 KB a record). Only candidates are sent back.
SERVER_PAGE = 1000
#: Columns of ``errors list`` and ``errors tail``.
ERROR_COLUMNS = ("id", "time", "task", "severity", "exception", "decision", "message")
#: Columns of ``dead list``.
DEAD_COLUMNS = ("id", "time", "task", "exception", "severity", "replayable")

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)([smhdw]))", re.I)
_STREAM_ID = re.compile(r"(\d+)(?:-(\d+))?")  # fullmatch
_GLOB = re.compile(r"[*?\[]")
_PLAIN = re.compile(r"[ -~]*")  # printable ASCII (fullmatch)
F = TypeVar("F", bound=Callable[..., Any])


# -- time ------------------------------------------------------------------------------
def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``5m``, ``1h``, ``2d``, ``1w`` or a sum such as ``1h30m``."""
    spec = text.strip().replace(" ", "")
    parts = _DURATION.findall(spec)
    if not spec or "".join(n + u for n, u in parts).lower() != spec.lower():
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h, 2d)")
    return sum(float(n) * UNITS[u.lower()] for n, u in parts)


def parse_when(text: str, *, now: float) -> float:
    """A point in time as unix seconds: a duration ago (``1h``), ISO 8601, or ``now``.

    An ISO timestamp without a zone is read as UTC, the zone every time is shown in.
    """
    spec = text.strip()
    if spec.lower() == "now":
        return now
    if spec and spec[0].isdigit() and spec[-1].lower() in UNITS and "-" not in spec:
        return now - parse_duration(spec)
    try:
        when = dt.datetime.fromisoformat(spec[:-1] + "+00:00" if spec[-1:] in "zZ" and spec
                                         else spec)
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use a duration ago such as 30s, 5m, 1h, 2d, or ISO 8601 "
            "such as 2024-05-01T12:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def iso(timestamp: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC to the second (``2024-05-01T12:00:00Z``)."""
    if timestamp is None:
        return None
    try:
        moment = dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Window:
    """A time window as stream ID bounds: ``XREVRANGE key <upper> <lower>``."""

    since: float | None = None
    until: float | None = None

    @classmethod
    def parse(cls, since: str | None, until: str | None, *, now: float) -> Window:
        """From ``--since``/``--until`` text; a ValueError names what is wrong."""
        window = cls(None if since is None else parse_when(since, now=now),
                     None if until is None else parse_when(until, now=now))
        if window.since is not None and window.until is not None and window.since > window.until:
            raise ValueError(f"--since ({since}) is after --until ({until})")
        return window

    @property
    def lower(self) -> str:
        """The smallest stream ID in the window (``-``: the stream's start)."""
        return "-" if self.since is None else str(max(int(self.since * 1000), 0))

    @property
    def upper(self) -> str:
        """The largest stream ID in the window (``+``: the stream's end); ms, any sequence."""
        return "+" if self.until is None else str(max(int(self.until * 1000), 0))


# -- stream IDs ------------------------------------------------------------------------
def check_id(text: str) -> str:
    """A stream entry ID (``1714567890123-0``) as given; ValueError when it is not one."""
    if not _STREAM_ID.fullmatch(text.strip()):
        raise ValueError(f"not an entry id: {text!r} (ids look like 1714567890123-0)")
    return text.strip()


def id_ms(entry_id: str) -> int:
    """The milliseconds part of a stream ID."""
    return int(entry_id.partition("-")[0])


def previous_id(entry_id: str) -> str | None:
    """The ID just before ``entry_id`` (an exclusive bound on any Redis version)."""
    ms, _, seq = entry_id.partition("-")
    if seq and int(seq) > 0:
        return f"{ms}-{int(seq) - 1}"
    return f"{int(ms) - 1}-{MAX_SEQ}" if int(ms) > 0 else None


def next_id(entry_id: str) -> str | None:
    """The ID just after ``entry_id``."""
    ms, _, seq = entry_id.partition("-")
    seq_n = int(seq or 0)
    return f"{ms}-{seq_n + 1}" if seq_n < MAX_SEQ else f"{int(ms) + 1}-0"


# -- entries and filters ---------------------------------------------------------------
@dataclass
class Entry:
    """One stream entry: its ID, the raw ``record`` bytes, and ``replay`` when present.

    ``task`` is the dead letter's own ``task`` field: the task whose retention it counts
    against (None on entries written before that field, and on the error log).
    """

    id: str
    raw: bytes
    replay_raw: bytes | None = None
    task: str | None = None
    _record: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def record(self) -> dict[str, Any]:
        """The parsed record (redacted when written); an ``_unreadable`` marker for a bad one.

        Anything that is not a JSON object, or that cannot be parsed at all (invalid, or
        nested deeper than the parser goes), is marked with the reason, never raised.
        """
        if self._record is None:
            reason = "not a JSON object"
            try:
                value = json.loads(self.raw)
            except RecursionError:
                value, reason = None, "nested too deep"
            except Exception as exc:
                value, reason = None, f"not JSON ({type(exc).__name__})"
            self._record = value if isinstance(value, dict) else {"_unreadable": reason}
        return self._record

    @property
    def readable(self) -> bool:
        """Whether the record parsed as a JSON object."""
        return "_unreadable" not in self.record

    @property
    def timestamp(self) -> float:
        """When the failure happened: the record's ``timestamp``, else the entry ID's time."""
        value = self.record.get("timestamp")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
        text = self.record.get("time")  # notification payloads carry an ISO time
        if isinstance(text, str):
            try:
                return parse_when(text, now=0.0)
            except ValueError:
                pass
        return id_ms(self.id) / 1000


def decode_entries(items: Iterable[tuple[Any, Mapping[Any, Any]]]) -> list[Entry]:
    """Entries from an XRANGE/XREVRANGE/XREAD reply (bytes, as redis-py returns them)."""
    out = []
    for entry_id, fields in items:
        raw = fields.get(b"record", b"")
        task = fields.get(TASK_FIELD.encode())
        out.append(Entry(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id),
                         raw if isinstance(raw, bytes) else str(raw).encode(),
                         fields.get(b"replay"),
                         task.decode("utf-8", "replace") if isinstance(task, bytes) else None))
    return out


def severities_from(severity: Sequence[str] = (), min_severity: str | None = None
                    ) -> frozenset[str] | None:
    """The severity labels ``--severity`` (exact) and ``--min-severity`` allow; None: all."""
    allowed: set[str] | None = None
    for name in severity:
        label = Severity.parse(name).label
        allowed = (allowed or set()) | {label}
    if min_severity is not None:
        floor = Severity.parse(min_severity)
        above = {s.label for s in Severity if s >= floor}
        allowed = above if allowed is None else allowed & above
    return None if allowed is None else frozenset(allowed)


def _quoted(value: str) -> bytes | None:
    """``value`` as it appears inside a JSON document, when that form is certain."""
    return json.dumps(value).encode() if _PLAIN.fullmatch(value) else None


@dataclass(frozen=True)
class RecordFilter:
    """Which records a command wants; ``matches`` decides, ``may_match`` pre-checks raw bytes.

    ``tasks`` and ``exceptions`` match exactly (a task may be a glob such as ``shop.*``; an
    exception its class name or ``module.Class``); ``grep`` is a case-insensitive substring
    of the message, exception type or task name.
    """

    tasks: tuple[str, ...] = ()
    severities: frozenset[str] | None = None
    exceptions: tuple[str, ...] = ()
    grep: str | None = None
    #: Groups of byte strings: a match contains at least one of each group.
    needles: tuple[tuple[bytes, ...], ...] = field(default=(), init=False, repr=False)
    #: ``grep`` lower-cased, when a raw record that lacks it certainly does not match.
    grep_bytes: bytes | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        needles: list[tuple[bytes, ...]] = []
        if self.tasks and not any(_GLOB.search(t) for t in self.tasks):
            quoted = [_quoted(t) for t in self.tasks]
            if all(q is not None for q in quoted):
                needles.append(tuple(q for q in quoted if q is not None))
        if self.severities is not None:
            needles.append(tuple(json.dumps(s).encode() for s in sorted(self.severities)))
        if self.exceptions:  # the class name: the whole of e, or what follows any dot in it
            names = {e[i + 1:] for e in self.exceptions for i, c in enumerate(e) if c == "."}
            quoted = [_quoted(n) for n in sorted(names.union(self.exceptions))]
            if all(q is not None for q in quoted):
                needles.append(tuple(q for q in quoted if q is not None))
        object.__setattr__(self, "needles", tuple(needles))
        if self.grep and _PLAIN.fullmatch(self.grep) and not set(self.grep) & {'"', "\\"}:
            object.__setattr__(self, "grep_bytes", self.grep.lower().encode())

    @property
    def prechecks(self) -> bool:
        """True when :meth:`may_match` can reject anything."""
        return bool(self.needles) or self.grep_bytes is not None

    @property
    def empty(self) -> bool:
        """True when the filter lets everything through."""
        return not (self.tasks or self.severities is not None or self.exceptions or self.grep)

    def may_match(self, raw: bytes) -> bool:
        """False only when the record certainly does not match (no JSON parsed)."""
        for group in self.needles:
            if not any(needle in raw for needle in group):
                return False
        grep = self.grep_bytes
        # An escaped non-ASCII character could lower-case into the needle: parse those.
        return grep is None or grep in raw.lower() or b"\\u" in raw

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Whether the parsed record is wanted."""
        task = str(record.get("task_name") or "")
        if self.tasks and not any(fnmatch.fnmatchcase(task, t) for t in self.tasks):
            return False
        if self.severities is not None and record.get("severity") not in self.severities:
            return False
        exc = str(record.get("exception_type") or "")
        if self.exceptions:
            dotted = f"{record.get('exception_module') or ''}.{exc}"
            if not any(e in (exc, dotted) for e in self.exceptions):
                return False
        if self.grep:
            needle = self.grep.lower()
            if not any(needle in str(record.get(k) or "").lower()
                       for k in ("message", "exception_type", "task_name")):
                return False
        return True

    def select(self, entries: Iterable[Entry]) -> Iterator[Entry]:
        """The entries this filter wants, pre-checking before parsing."""
        if self.empty:
            yield from entries
            return
        may_match, matches = self.may_match, self.matches
        for entry in entries:
            if may_match(entry.raw) and matches(entry.record):
                yield entry


# -- rows ------------------------------------------------------------------------------
def error_row(entry: Entry, *, full: bool = False) -> dict[str, Any]:
    """A table row of an error-log entry; with ``full``, id, time and the whole record (JSON).

    The entry's own ``id`` and ``time`` always win: a record's fields of those names are
    shown as ``record_id`` and ``record_time``. An unreadable record is a row that says so.
    """
    record = entry.record
    when = iso(entry.timestamp)
    if not entry.readable:
        message = f"unreadable record ({record['_unreadable']})"
        if full:
            return {"id": entry.id, "time": when, "unreadable": message}
        return {"id": entry.id, "time": when, "task": None, "severity": None,
                "exception": None, "decision": None, "message": message}
    if full:
        row = {(f"record_{k}" if k in ("id", "time") else k): v for k, v in record.items()}
        row.update(id=entry.id, time=when)
        return row
    return {"id": entry.id, "time": when, "task": record.get("task_name"),
            "severity": record.get("severity"), "exception": record.get("exception_type"),
            "decision": record.get("decision"), "message": record.get("message")}


class FailureCounts:
    """Failures counted by task × exception × severity, with first and last seen.

    First and last are the entries' stream-ID times (when each record was written).
    """

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str, str], list[float]] = {}

    def add(self, key: tuple[str, str, str], count: int, first: float, last: float) -> None:
        """Add ``count`` failures of ``key`` seen between ``first`` and ``last``."""
        group = self._groups.get(key)
        if group is None:
            self._groups[key] = [count, first, last]
        else:
            group[0] += count
            group[1] = min(group[1], first)
            group[2] = max(group[2], last)

    def add_entry(self, entry: Entry) -> None:
        """Count one entry."""
        record = entry.record
        when = id_ms(entry.id) / 1000
        self.add((str(record.get("task_name")), str(record.get("exception_type")),
                  str(record.get("severity"))), 1, when, when)

    def rows(self) -> list[dict[str, Any]]:
        """Most frequent first (then most severe, then by name)."""
        rank = {label: i for i, label in enumerate(SEVERITIES)}
        ordered = sorted(self._groups.items(),
                         key=lambda kv: (-kv[1][0], -rank.get(kv[0][2], -1), kv[0]))
        return [{"task": task, "exception": exc, "severity": sev, "count": int(n),
                 "first": iso(first), "last": iso(last)}
                for (task, exc, sev), (n, first, last) in ordered]


def count_by(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    """Counts by task × exception × severity, most frequent first, with first/last seen."""
    counts = FailureCounts()
    for entry in entries:
        counts.add_entry(entry)
    return counts.rows()


def line_for(row: Mapping[str, Any], widths: Mapping[str, int]) -> str:
    """One fixed-width line of ``row`` (for output that streams, such as ``errors tail``)."""
    cells = []
    for column, width in widths.items():
        try:
            text = cell_text(row.get(column))
        except (RecursionError, ValueError, TypeError):
            text = "<unreadable>"
        cells.append(text[: width - 1] + "…" if len(text) > width else text.ljust(width))
    return "  ".join(cells).rstrip()


def mask_url(url: str) -> str:
    """A Redis URL with its password hidden, for messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<redis url>"


# -- Redis -----------------------------------------------------------------------------
#: One page of a scan, pre-checked inside Redis like :meth:`RecordFilter.may_match`.
#: KEYS[1] the stream; ARGV: upper, lower, count, newest first (1/0), grep needle (lower case,
#: empty for none), number of needle groups, then per group its size and its needles.
#: Returns: entries read, the last one's ID, then id, record, replay of each candidate.
PRECHECK_SCRIPT = r"""
local items
if ARGV[4] == '1' then
  items = redis.call('XREVRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
else
  items = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[1], 'COUNT', ARGV[3])
end
local groups, at = {}, 7
for g = 1, tonumber(ARGV[6]) do
  local size, group = tonumber(ARGV[at]), {}
  for k = 1, size do group[k] = ARGV[at + k] end
  groups[g], at = group, at + size + 1
end
local grep = ARGV[5]
local out = {#items, false}
if #items > 0 then out[2] = items[#items][1] end
for _, item in ipairs(items) do
  local fields, record, replay = item[2], '', false
  for f = 1, #fields, 2 do
    if fields[f] == 'record' then record = fields[f + 1]
    elseif fields[f] == 'replay' then replay = fields[f + 1] end
  end
  local ok = true
  for _, group in ipairs(groups) do
    local any = false
    for _, needle in ipairs(group) do
      if string.find(record, needle, 1, true) then any = true break end
    end
    if not any then ok = false break end
  end
  if ok and grep ~= '' then
    ok = string.find(string.lower(record), grep, 1, true) ~= nil
      or string.find(record, '\\u', 1, true) ~= nil
  end
  if ok then
    out[#out + 1] = item[1]
    out[#out + 1] = record
    out[#out + 1] = replay
  end
end
return out
"""

#: One page of ``errors stats`` counted inside Redis. KEYS[1] the stream; ARGV: upper, lower,
#: count. A record written by the error-log sink starts with its task name, and its severity
#: and exception type come before any nested value, so their first occurrence is theirs;
#: a record that does not look like that is sent back whole to be read in Python.
#: Returns: entries read, the last one's ID, groups {task, exception, severity, count,
#: first ID, last ID}, then id and record of each record not counted here.
COUNT_SCRIPT = r"""
local items = redis.call('XREVRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
local function simple(record, name)
  local at = string.find(record, '"' .. name .. '": "', 1, true)
  if not at then return nil end
  return string.match(record, '^([^"\\]*)"', at + #name + 5)
end
local groups, order, odd = {}, {}, {}
for _, item in ipairs(items) do
  local id, fields, record = item[1], item[2], ''
  for f = 1, #fields, 2 do
    if fields[f] == 'record' then record = fields[f + 1] end
  end
  local task, exc, sev
  if string.sub(record, 1, 15) == '{"task_name": "' then
    task = string.match(record, '^([^"\\]*)"', 16)
    exc = simple(record, 'exception_type')
    sev = simple(record, 'severity')
  end
  if task and exc and sev then
    local key = task .. '\0' .. exc .. '\0' .. sev
    local group = groups[key]
    if group then
      group[4] = group[4] + 1
      group[5] = id
    else
      group = {task, exc, sev, 1, id, id}
      groups[key] = group
      order[#order + 1] = group
    end
  else
    odd[#odd + 1] = id
    odd[#odd + 1] = record
  end
end
local edge = false
if #items > 0 then edge = items[#items][1] end
return {#items, edge, order, odd}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GuardStreams:
    """The app's error-log and dead-letter streams, read and trimmed with one client."""

    def __init__(self, redis_url: str, key_prefix: str, *, timeout: float = 10.0) -> None:
        import redis

        self.redis_url = redis_url
        self.errors_key = key_prefix + "errors"
        self.dead_key = key_prefix + "dead"
        self.client: Any = redis.Redis.from_url(redis_url, socket_timeout=timeout,
                                                socket_connect_timeout=min(timeout, 5.0))
        self._script = self.client.register_script(PRECHECK_SCRIPT)
        self._count_script = self.client.register_script(COUNT_SCRIPT)
        self._use_script = True

    @classmethod
    def for_cli(cls, cli: CliContext) -> tuple[GuardStreams, Any]:
        """The streams of the CLI's app and its guard; one-line errors when they are missing."""
        try:
            guard = cli.guard()
        except click.ClickException:
            raise
        except Exception as exc:  # the app module or its settings raised
            raise UsageError(f"cannot load the app or its telemetry_guard settings: "
                             f"{type(exc).__name__}: {exc}") from None
        settings = guard.settings
        if not settings.redis_url:
            raise UsageError("the app has no telemetry_guard Redis: set "
                             "telemetry_guard_redis_url (or use a Redis broker)")
        return cls(settings.redis_url, settings.key_prefix), guard

    def scan(self, key: str, window: Window = Window(), flt: RecordFilter = RecordFilter(), *,
             limit: int | None = None, newest_first: bool = True) -> Iterator[Entry]:
        """Matching entries of ``key`` inside ``window``, paged, stopping after ``limit``.

        With a filter that can pre-check, each page is pre-checked inside Redis (a short
        script per page), so only candidates cross the network; else it is read whole.
        """
        upper, lower = window.upper, window.lower
        if flt.empty:
            page = min(limit, PAGE) if limit else PAGE
        else:
            page = FIRST_PAGE
        found = 0
        while True:
            scanned, edge, candidates = self._page(key, upper, lower, page, newest_first, flt)
            for entry in candidates:
                if flt.empty or flt.matches(entry.record):
                    yield entry
                    found += 1
                    if limit is not None and found >= limit:
                        return
            if scanned < page or edge is None:
                return
            bound = previous_id(edge) if newest_first else next_id(edge)
            if bound is None:
                return
            if newest_first:
                upper = bound
            else:
                lower = bound
            page = SERVER_PAGE if self._use_script and flt.prechecks else PAGE

    def count(self, key: str, window: Window = Window(),
              flt: RecordFilter = RecordFilter()) -> FailureCounts:
        """Failures in ``window`` counted by task × exception × severity.

        Without a filter the counting is done inside Redis a page at a time (only the
        groups and records it could not read simply come back); with one, here.
        """
        counts = FailureCounts()
        if not flt.empty or not self._use_script:
            for entry in self.scan(key, window, flt):
                counts.add_entry(entry)
            return counts
        import redis

        upper, lower = window.upper, window.lower
        while True:
            try:
                scanned, edge, groups, odd = self._count_script(
                    keys=[key], args=[upper, lower, SERVER_PAGE])
            except redis.ResponseError:  # scripting unavailable: count here, from the start
                self._use_script = False
                return self.count(key, window, flt)
            for task, exc, sev, n, first, last in groups:
                counts.add((_text(task), _text(exc), _text(sev)), int(n),
                           id_ms(_text(first)) / 1000, id_ms(_text(last)) / 1000)
            for i in range(0, len(odd), 2):
                counts.add_entry(Entry(_text(odd[i]), odd[i + 1] or b""))
            if int(scanned) < SERVER_PAGE or not edge:
                return counts
            bound = previous_id(_text(edge))
            if bound is None:
                return counts
            upper = bound

    def _page(self, key: str, upper: str, lower: str, count: int, newest_first: bool,
              flt: RecordFilter) -> tuple[int, str | None, list[Entry]]:
        """One page: how many entries were read, the last one's ID, the candidates."""
        if flt.prechecks and self._use_script:
            import redis

            args: list[Any] = [upper, lower, count, int(newest_first), flt.grep_bytes or b"",
                               len(flt.needles)]
            for group in flt.needles:
                args += [len(group), *group]
            try:
                reply = self._script(keys=[key], args=args)
            except redis.ResponseError:  # scripting disabled or unsupported: filter here
                self._use_script = False
            else:
                scanned, edge = int(reply[0]), reply[1]
                found = [Entry(_text(reply[i]), reply[i + 1], reply[i + 2])
                         for i in range(2, len(reply), 3)]
                return scanned, _text(edge) if edge else None, found
        if newest_first:
            items = self.client.xrevrange(key, upper, lower, count=count)
        else:
            items = self.client.xrange(key, lower, upper, count=count)
        entries = decode_entries(items)
        edge_id = entries[-1].id if entries else None
        if flt.prechecks:
            entries = [e for e in entries if flt.may_match(e.raw)]
        return len(items), edge_id, entries

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
                f"cannot reach Redis at {printable(mask_url(self.redis_url))}: "
                f"{printable(str(exc))}") from None

    def get(self, key: str, entry_id: str) -> Entry | None:
        """The entry with this ID, or None."""
        items = self.client.xrange(key, entry_id, entry_id, count=1)
        entries = decode_entries(items)
        return entries[0] if entries else None

    def last_id(self, key: str) -> str:
        """The newest entry's ID (``0-0`` when the stream is empty)."""
        items = self.client.xrevrange(key, "+", "-", count=1)
        return decode_entries(items)[0].id if items else "0-0"

    def follow(self, key: str, after: str, *, block_ms: int = 1000) -> Iterator[list[Entry]]:
        """Batches of entries newer than ``after`` as they arrive (an empty batch per idle wait)."""
        while True:
            reply = self.client.xread({key: after}, count=PAGE, block=block_ms)
            if not reply:
                yield []
                continue
            # RESP2: [[key, entries]]; RESP3: {key: [entries]}
            items = next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
            entries = decode_entries(items)
            after = entries[-1].id
            yield entries

    def delete(self, key: str, entry_ids: Sequence[str]) -> int:
        """XDEL in batches; how many entries were removed."""
        removed = 0
        for start in range(0, len(entry_ids), PAGE):
            removed += int(self.client.xdel(key, *entry_ids[start:start + PAGE]))
        return removed

    def delete_dead(self, entries: Sequence[Entry]) -> int:
        """Remove dead letters with their ids in their tasks' indexes and any replay claim."""
        removed = 0
        for start in range(0, len(entries), PAGE):
            removed += remove_dead_letters(
                self.client, self.dead_key,
                [(e.id, index_tasks(e)) for e in entries[start:start + PAGE]])
        return removed


def index_tasks(entry: Entry) -> tuple[str, ...]:
    """The tasks whose retention index may hold a dead letter's id (its own field first)."""
    names = [entry.task, entry.record.get("task_name")]
    if entry.replay_raw:
        try:
            replay = json.loads(entry.replay_raw)
            names.append(replay.get("task") if isinstance(replay, dict) else None)
        except Exception:
            pass
    return tuple(dict.fromkeys(n for n in names if isinstance(n, str) and n))


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


def json_option(func: F) -> F:
    """``--json`` on a sub-command, as well as on the group."""
    return click.option("--json", "as_json", is_flag=True,
                        help="JSON lines instead of a table.")(func)


def build_filter(tasks: Sequence[str] = (), severity: Sequence[str] = (),
                 min_severity: str | None = None, exceptions: Sequence[str] = (),
                 grep: str | None = None) -> RecordFilter:
    """The filter of the shared options; a one-line usage error on a bad severity."""
    try:
        severities = severities_from(severity, min_severity)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return RecordFilter(tuple(tasks), severities, tuple(exceptions), grep or None)


def build_window(since: str | None, until: str | None, *, now: float) -> Window:
    """The window of ``--since``/``--until``; a one-line usage error when malformed."""
    try:
        return Window.parse(since, until, now=now)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cli_context(ctx: click.Context) -> CliContext:
    """The group's CliContext (a usage error when a command is run outside the group)."""
    cli = ctx.find_object(CliContext)
    if cli is None:
        raise UsageError("run this through `telemetry-guard` or `celery -A proj guard`")
    return cli


def wants_json(cli: CliContext, as_json: bool) -> bool:
    """JSON output when asked for on the group or on the sub-command."""
    return bool(cli.as_json or as_json)
