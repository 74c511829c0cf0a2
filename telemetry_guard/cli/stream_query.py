"""The errors/dead commands' queries, pure: time windows, stream IDs, record filters, rows.

Nothing here talks to Redis (that is :mod:`telemetry_guard.stores.streams`, paged by
:mod:`telemetry_guard.cli.streams`). A :class:`RecordFilter` decides on a parsed record
(``matches``) and offers substring needles that every match contains, so raw records can be
pre-checked before their JSON is parsed, here (``may_match``) or inside Redis.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.classify import Severity
from .output import cell_text

#: Severity labels, lowest first.
SEVERITIES: tuple[str, ...] = tuple(s.label for s in sorted(Severity))
#: Seconds per duration unit: ``30s``, ``5m``, ``1h``, ``2d``, ``1w`` (and combined: ``1h30m``).
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The largest sequence number of a stream ID.
MAX_SEQ = 2**64 - 1
#: Columns of ``errors list`` and ``errors tail``.
ERROR_COLUMNS = ("id", "time", "task", "severity", "exception", "decision", "message")
#: Columns of ``dead list``.
DEAD_COLUMNS = ("id", "time", "task", "exception", "severity", "replayable")

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)([smhdw]))", re.I)
_STREAM_ID = re.compile(r"(\d+)(?:-(\d+))?")  # fullmatch
_GLOB = re.compile(r"[*?\[]")
_PLAIN = re.compile(r"[ -~]*")  # printable ASCII (fullmatch)


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


def id_order(bound: str, *, upper: bool = False) -> tuple[float, float]:
    """A stream ID or range bound (``-``, ``+``, ``ms``, ``ms-seq``) as a sortable pair; a
    bare ``ms`` is its first ID, or its last as an ``upper`` bound (as XRANGE reads it)."""
    if bound in ("-", "+"):
        edge = float("-inf") if bound == "-" else float("inf")
        return edge, edge
    ms, _, seq = bound.partition("-")
    return float(ms), float(seq) if seq else (float(MAX_SEQ) if upper else 0.0)


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
    of the message, exception type or task name; ``roots`` are workflow root ids (a
    record of any task of those workflows).
    """

    tasks: tuple[str, ...] = ()
    severities: frozenset[str] | None = None
    exceptions: tuple[str, ...] = ()
    grep: str | None = None
    roots: tuple[str, ...] = ()
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
        if self.roots:
            quoted = [_quoted(r) for r in self.roots]
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
    def exact_tasks(self) -> tuple[str, ...]:
        """The task names, when the filter wants only tasks named exactly (no glob)."""
        return () if any(_GLOB.search(t) for t in self.tasks) else self.tasks

    @property
    def empty(self) -> bool:
        """True when the filter lets everything through."""
        return not (self.tasks or self.severities is not None or self.exceptions or self.grep
                    or self.roots)

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
        if self.roots and record.get("root_id") not in self.roots:
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

