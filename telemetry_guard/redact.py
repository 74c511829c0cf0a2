"""Redaction and bounded, JSON-safe serialisation, shared by every sink (pure, never raises).

:meth:`Redactor.redact` maps: a value under a matching dict key → :data:`REDACTED`; str values
and keys → scrubbed like :meth:`Redactor.redact_text`, cut to ``max_value_chars`` plus
:data:`TRUNCATED_MARKER`; tuple → list; set/frozenset → list, sorted if its elements are
orderable, else in iteration order; bytes → repr of the first ``max_value_chars`` bytes;
NaN/±inf → ``"nan"``/``"inf"``/``"-inf"``; ints over 256 bits → hex; anything else → its
scrubbed :func:`safe_repr`; a cycle → :data:`CYCLE_MARKER`; nesting past ``max_depth`` →
:data:`DEPTH_MARKER`; past ``max_items`` a list ends with ``"<N more items>"`` and a dict gets
a ``"<more keys>": N`` entry.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

JSONValue: TypeAlias = "None | bool | int | float | str | list[JSONValue] | dict[str, JSONValue]"

REDACTED = "[REDACTED]"
#: Appended to a cut string; ``n`` counts the characters dropped.
TRUNCATED_MARKER = "…[truncated {n} chars]"
CYCLE_MARKER = "<cycle>"
DEPTH_MARKER = "<max depth>"
MORE_ITEMS_MARKER = "<{n} more items>"
MORE_KEYS_KEY = "<more keys>"
OMITTED_MARKER = "<{n} bytes omitted>"
#: The smallest ``max_record_bytes`` accepted: room for ``{"_truncated": true}`` and a field.
MIN_RECORD_BYTES = 64

#: Regex source matched case-insensitively with ``search`` on dict keys (``auth`` also covers
#: ``authorization``; the separators ``-_. `` are optional).
DEFAULT_REDACT_KEYS = (
    r"passw(?:or)?d|secret|token|api[-_. ]?key|auth|cookie|session"
    r"|private[-_. ]?key|credit[-_. ]?card|card[-_. ]?number"
)

_Record: TypeAlias = "dict[str, Any]"
_Strings: TypeAlias = "list[tuple[Any, Any, str]]"  # (parent, key, text) of string leaves
_Containers: TypeAlias = "list[tuple[int, Any, Any, tuple[int, ...]]]"  # size, parent, key, above
_SCRUB_SLACK = 256  # text is scrubbed this far past the cut, so a straddling secret is caught
_MAX_INT_BITS = 256
_KEY_CACHE_SIZE = 1024
_TOKENS = (
    r"[sr]k_(?:live|test)_[0-9A-Za-z]{8,}"  # Stripe
    r"|sk-[0-9A-Za-z_-]{20,}"  # OpenAI and alike
    r"|gh[pousr]_[0-9A-Za-z]{20,}|github_pat_\w{20,}"  # GitHub
    r"|xox[baprs]-[0-9A-Za-z-]{10,}"  # Slack
    r"|AKIA[0-9A-Z]{16}"  # AWS access key id
)


def _text_pattern(keys: re.Pattern[str]) -> re.Pattern[str]:
    """One regex for every secret shape in free text, embedding the key pattern."""
    source = re.sub(r"^[(][?][aiLmsux]+[)]", "", keys.pattern)  # global flags: see keys.flags
    key = f"(?{'i' if keys.flags & re.I else '-i'}:{source})"
    return re.compile(
        r"(?P<auth>\b(?i:bearer)\s+|\bBasic\s+(?=[A-Za-z0-9+/]{6}))[\w.~+/-]+=*"
        r"|(?P<url>\b[A-Za-z][\w+.-]{0,30}://[^\s:/@]*:)[^\s/?#@]+(?=@)"
        rf"|(?P<pair>(?<![\w.-])[\"']?[\w.-]{{0,40}}{key}[\w.-]{{0,40}}[\"']?[ \t]*[:=][ \t]*)"
        r"(?P<value>\"[^\"]*\"|'[^']*'|(?i:(?:bearer|basic)\s+)?[^\s\"',;&}]+)"
        rf"|(?<![0-9A-Za-z])(?:{_TOKENS})(?![0-9A-Za-z])"
    )


def _replace(match: re.Match[str]) -> str:
    prefix = match["auth"] or match["url"]
    if prefix:
        return prefix + REDACTED
    if match["pair"] is not None:
        quote = match["value"][0] if match["value"][0] in "\"'" else ""
        return f"{match['pair']}{quote}{REDACTED}{quote}"
    return REDACTED


def _truncate(text: str, limit: int, total: int | None = None) -> str:
    """Cut ``text`` to ``limit`` chars plus the marker; ``total`` is its length before any cut."""
    total = len(text) if total is None else total
    return text if total <= limit else text[:limit] + TRUNCATED_MARKER.format(n=total - limit)


def _marker_cost(n: int) -> int:
    return len(_encode(TRUNCATED_MARKER.format(n=n))) - 2


def _saving(size: int) -> int:
    """Bytes saved by replacing a ``size``-byte structure with the (ASCII) omitted marker."""
    return size - len(OMITTED_MARKER.format(n=size)) - 2


def _encode(value: object) -> str:
    return json.dumps(value, allow_nan=False)


def _type_name(obj: object) -> str:
    try:
        return str(type(obj).__name__)
    except Exception:
        return "object"


def _raw_text(obj: object, use_str: bool = False) -> str:
    """``repr(obj)`` (or ``str(obj)``) as an exact str, or a marker naming the type."""
    try:
        return str.__str__(str(obj) if use_str else repr(obj))
    except Exception:
        return f"<{'unprintable' if use_str else 'unrepresentable'} {_type_name(obj)}>"


def safe_repr(obj: object, limit: int = 2048) -> str:
    """``repr(obj)`` cut to ``limit`` chars; ``"<unrepresentable TypeName>"`` if it raises."""
    return _truncate(_raw_text(obj), max(limit, 0))


def exception_message(exc: BaseException, limit: int = 2048) -> str:
    """``str(exc)`` cut to ``limit`` chars; ``"<unprintable TypeName>"`` if it raises."""
    return _truncate(_raw_text(exc, True), max(limit, 0))


class Redactor:
    """Turns any value into a redacted, bounded, strict-JSON copy; built once, then shared.

    A ``str`` key pattern is compiled case-insensitively; a compiled one keeps its own flags.
    """

    def __init__(
        self,
        *,
        key_pattern: str | re.Pattern[str] = DEFAULT_REDACT_KEYS,
        max_value_chars: int = 2048,
        max_record_bytes: int = 32768,
        max_depth: int = 8,
        max_items: int = 100,
    ) -> None:
        if min(max_value_chars, max_depth, max_items) < 1 or max_record_bytes < MIN_RECORD_BYTES:
            raise ValueError(f"limits must be >= 1 and max_record_bytes >= {MIN_RECORD_BYTES}")
        self._key_re = (
            key_pattern if isinstance(key_pattern, re.Pattern) else re.compile(key_pattern, re.I)
        )
        self._text_re = _text_pattern(self._key_re)
        self._max_chars = max_value_chars
        self._max_bytes = max_record_bytes
        self._max_depth = max_depth
        self._max_items = max_items
        self._keys: dict[str, tuple[str, bool]] = {}

    def redact(self, value: object) -> JSONValue:
        """Return a JSON-safe, redacted, bounded copy of any value (args, kwargs, headers)."""
        return self._walk(value, 0, set())

    def redact_text(self, text: object) -> str:
        """Scrub secrets inside free text (exception messages, tracebacks) and truncate."""
        try:
            is_str, is_exc = isinstance(text, str), isinstance(text, BaseException)
            return self._scrub(str.__str__(text) if is_str else _raw_text(text, is_exc))
        except Exception:
            return f"<unprintable {_type_name(text)}>"

    def truncate_head(self, text: str) -> str:
        """Keep the end of ``text`` (a traceback's last lines matter most), marker first."""
        limit = self._max_chars
        if len(text) <= limit:
            return text
        return TRUNCATED_MARKER.format(n=len(text) - limit) + text[-limit:]

    def bound_record(self, record: dict[str, JSONValue]) -> dict[str, JSONValue]:
        """Shrink a record so json.dumps(record) (UTF-8) fits max_record_bytes, with a marker.

        A record that fits is returned as is. Otherwise a copy: the longest strings are cut first
        (to one common length), then the smallest sub-structure whose removal suffices (else the
        largest, repeatedly) becomes ``"<N bytes omitted>"``, then top-level fields are dropped;
        ``"_truncated": true`` is added. A record that is not JSON-safe is redacted first.
        """
        try:
            try:
                encoded = _encode(record)
            except Exception:  # not JSON-safe: make it so first
                safe = self.redact(record)
                record = safe if isinstance(safe, dict) else {"value": safe}
                encoded = _encode(record)
            if len(encoded) <= self._max_bytes:
                return record
            out: _Record = json.loads(encoded)
            out["_truncated"] = True
            for shrink in (_cut_strings, _drop_containers, _drop_fields):
                excess = len(_encode(out)) - self._max_bytes
                if excess <= 0:
                    break
                strings: _Strings = []
                boxes: _Containers = []
                _inventory(out, (), strings, boxes)
                shrink(out, strings, boxes, excess)
            return out if len(_encode(out)) <= self._max_bytes else {"_truncated": True}
        except Exception:
            return {"_truncated": True}

    def dumps(self, record: dict[str, object]) -> str:
        """json.dumps of redact+bound_record; never raises; always valid JSON within the bound."""
        try:
            safe = self.redact(record)
            return _encode(self.bound_record(safe if isinstance(safe, dict) else {"value": safe}))
        except Exception:
            return '{"_truncated": true}'

    def _scrub(self, text: str, dropped: int = 0) -> str:
        window = self._max_chars + _SCRUB_SLACK
        if len(text) > window:
            dropped, text = dropped + len(text) - window, text[:window]
        text = self._text_re.sub(_replace, text)
        return _truncate(text, self._max_chars, len(text) + dropped)

    def _key(self, key: object) -> tuple[str, bool]:
        """A dict key's output form, and whether the value under it is redacted."""
        cached = self._keys.get(key) if type(key) is str else None
        if cached is None:
            text = str.__str__(key) if isinstance(key, str) else _raw_text(key)
            head = text[: self._max_chars + _SCRUB_SLACK]
            cached = (self._scrub(text), self._key_re.search(head) is not None)
            if type(key) is str and len(key) <= 256:
                if len(self._keys) >= _KEY_CACHE_SIZE:
                    self._keys.clear()
                self._keys[key] = cached
        return cached

    def _walk(self, value: Any, depth: int, path: set[int]) -> JSONValue:
        try:
            cls = type(value)
            if cls is str:
                return self._scrub(value)
            if cls is int:
                return self._scrub(hex(value)) if value.bit_length() > _MAX_INT_BITS else value
            if value is None or cls is bool:
                return None if value is None else value is True
            if cls is float:
                return value if math.isfinite(value) else repr(value)
            if isinstance(value, (dict, list, tuple, set, frozenset, Mapping)):
                if id(value) in path:
                    return CYCLE_MARKER
                if depth >= self._max_depth:
                    return DEPTH_MARKER
                path.add(id(value))
                try:
                    return self._walk_container(value, depth + 1, path)
                finally:
                    path.discard(id(value))
            if isinstance(value, str):
                return self._scrub(str.__str__(value))
            if isinstance(value, int):
                return self._walk(int.__int__(value), depth, path)
            if isinstance(value, float):
                return self._walk(float.__float__(value), depth, path)
            if isinstance(value, (bytes, bytearray, memoryview)):
                head = bytes(value[: self._max_chars])
                return self._scrub(repr(head), len(value) - len(head))
            return self._scrub(_raw_text(value))
        except Exception:
            return f"<unrepresentable {_type_name(value)}>"

    def _walk_container(self, value: Any, depth: int, path: set[int]) -> JSONValue:
        limit, total = self._max_items, len(value)
        if isinstance(value, Mapping):
            out: dict[str, JSONValue] = {}
            for key, item in itertools.islice(value.items(), limit):
                text, secret = self._key(key)
                out[text] = REDACTED if secret else self._walk(item, depth, path)
            if total > limit:
                out[MORE_KEYS_KEY] = total - limit
            return out
        items: Iterable[object] = itertools.islice(value, limit)
        if isinstance(value, (set, frozenset)):
            try:
                items = sorted(items)  # type: ignore[type-var]
            except Exception:
                items = itertools.islice(value, limit)
        listed = [self._walk(item, depth, path) for item in items]
        if total > limit:
            listed.append(MORE_ITEMS_MARKER.format(n=total - limit))
        return listed


def _inventory(node: Any, above: tuple[int, ...], strings: _Strings, boxes: _Containers) -> None:
    """Collect node's string leaves and (with their encoded size) its sub-containers."""
    inner = (*above, id(node))
    for key, value in node.items() if isinstance(node, dict) else enumerate(node):
        if isinstance(value, str):
            strings.append((node, key, value))
        elif isinstance(value, (dict, list)):
            boxes.append((len(_encode(value)), node, key, inner))
            _inventory(value, inner, strings, boxes)


def _cut_strings(out: _Record, strings: _Strings, boxes: _Containers, excess: int) -> None:
    """Cut every string longer than the highest common length that removes ``excess`` bytes."""

    def gain(cap: int) -> int:
        return sum(max(0, len(s) - cap - _marker_cost(len(s) - cap)) for _, _, s in strings)

    low, high = 0, max((len(s) for _, _, s in strings), default=0)
    while low < high:  # the highest cap whose gain covers the excess (0 if none does)
        mid = (low + high + 1) // 2
        low, high = (mid, high) if gain(mid) >= excess else (low, mid - 1)
    for parent, key, s in strings:
        if len(s) - low > _marker_cost(len(s) - low):
            parent[key] = _truncate(s, low)


def _drop_containers(out: _Record, strings: _Strings, boxes: _Containers, excess: int) -> None:
    """Replace the smallest sub-structure whose removal suffices, else the largest; repeat."""
    dropped: set[int] = set()
    boxes.sort(key=lambda box: box[0])
    while excess > 0:
        live = [box for box in boxes if _saving(box[0]) > 0 and dropped.isdisjoint(box[3])]
        live = [box for box in live if isinstance(box[1][box[2]], (dict, list))]
        if not live:
            return
        size, parent, key, _ = next((b for b in live if _saving(b[0]) >= excess), live[-1])
        dropped.add(id(parent[key]))
        parent[key] = OMITTED_MARKER.format(n=size)
        excess -= _saving(size)


def _drop_fields(out: _Record, strings: _Strings, boxes: _Containers, excess: int) -> None:
    """Remove the largest top-level fields (never ``_truncated``) until the record fits."""
    fields = sorted((k for k in out if k != "_truncated"), key=lambda k: -len(_encode(out[k])))
    for key in fields:
        if excess <= 0:
            return
        excess -= len(_encode(key)) + len(_encode(out.pop(key))) + 4
