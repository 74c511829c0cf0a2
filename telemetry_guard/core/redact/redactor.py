"""The redactor: any value to a redacted, bounded, strict-JSON copy (pure, never raises).

:meth:`Redactor.redact` maps: a value under a secret key (see :mod:`.keys`) → :data:`REDACTED`;
str values and keys → scrubbed like :meth:`Redactor.redact_text` (see :mod:`.patterns`), cut to
``max_value_chars`` plus :data:`TRUNCATED_MARKER`; a namedtuple → a dict of its fields
(redacted by field name); a list or tuple of ``(name, value)`` pairs whose names are str or
bytes (header lists, ASGI headers) → a list of ``[name, value]`` pairs, a value redacted by its
name; other tuples → lists; set/frozenset → list, sorted if its elements are orderable, else in
iteration order; bytes → repr of the first ``max_value_chars`` bytes; NaN/±inf →
``"nan"``/``"inf"``/``"-inf"``; ints over 256 bits → hex; anything else → its scrubbed
:func:`safe_repr`; a cycle → :data:`CYCLE_MARKER`; nesting past ``max_depth`` →
:data:`DEPTH_MARKER`; past ``max_items`` a list ends with ``"<N more items>"`` and a dict gets a
``"<more keys>": N`` entry.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .bound import MIN_RECORD_BYTES, encode, shrink
from .keys import DEFAULT_REDACT_KEYS, KEY_CACHE_SIZE, KeyMatcher, key_words
from .markers import (
    CYCLE_MARKER,
    DEPTH_MARKER,
    MORE_ITEMS_MARKER,
    MORE_KEYS_KEY,
    REDACTED,
    TRUNCATED_MARKER,
    JSONValue,
)
from .patterns import (
    CROSS_LINE_RE,
    LINE_VALUE_WORDS,
    PEM_TAIL,
    TEXT_CUT_RE,
    TEXT_RE,
    hidden,
    is_bare,
)
from .safe_text import raw_text, truncate, type_name

_SCRUB_SLACK = 512  # scrubbed past the cut (patterns there also end at the cut: PEM, URLs)
_MAX_INT_BITS = 256
#: Scrubbed lines remembered per redactor (then forgotten all at once), and the longest kept.
LINE_CACHE_SIZE = 4096
LINE_CACHE_CHARS = 256


def _key_text(key: object) -> str:
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, (bytes, bytearray)):
        return bytes(key[:1024]).decode("utf-8", "replace")
    return raw_text(key)


def _is_pair_list(value: Sequence[Any], limit: int) -> bool:
    """A non-empty list or tuple of ``(name, value)`` pairs named by str or bytes."""
    if not value or type(value) not in (list, tuple):
        return False
    return all(type(item) in (tuple, list) and len(item) == 2
               and isinstance(item[0], (str, bytes)) for item in itertools.islice(value, limit))


class Redactor:
    """Turns any value into a redacted, bounded, strict-JSON copy; built once, then shared.

    ``keys``: the secret words and word pairs (a list, or a comma-separated string), or a
    compiled ``re.Pattern`` searched in each raw key instead.
    """

    def __init__(
        self,
        *,
        keys: str | Iterable[str] | re.Pattern[str] = DEFAULT_REDACT_KEYS,
        max_value_chars: int = 2048,
        max_record_bytes: int = 32768,
        max_depth: int = 8,
        max_items: int = 100,
    ) -> None:
        if min(max_value_chars, max_depth, max_items) < 1 or max_record_bytes < MIN_RECORD_BYTES:
            raise ValueError(f"limits must be >= 1 and max_record_bytes >= {MIN_RECORD_BYTES}")
        self.is_secret_key = KeyMatcher(keys)
        self._text_re = TEXT_RE
        self._max_chars = max_value_chars
        self._max_bytes = max_record_bytes
        self._max_depth = max_depth
        self._max_items = max_items
        self._keys: dict[str, tuple[str, bool]] = {}
        self._lines: dict[str, str] = {}

    def redact(self, value: object) -> JSONValue:
        """Return a JSON-safe, redacted, bounded copy of any value (args, kwargs, headers)."""
        return self._walk(value, 0, set())

    def redact_text(self, text: object) -> str:
        """Scrub secrets inside free text (exception messages, source lines), then truncate.

        The one scrubber of every text the guard reports: messages, tracebacks (their source
        lines too), Sentry's frames and context lines, Celery's own log records.
        """
        try:
            is_str, is_exc = isinstance(text, str), isinstance(text, BaseException)
            return self._scrub(str.__str__(text) if is_str else raw_text(text, is_exc))
        except Exception:
            return f"<unprintable {type_name(text)}>"

    def redact_tail(self, text: str) -> str:
        """Scrub ``text`` and keep its end (a traceback's last lines matter most), marker first.

        Scrubbed before it is cut: at most ``max_value_chars`` plus a margin is read from the
        end, from a line start where there is one, so that no secret is cut in two.
        """
        try:
            text = str.__str__(text)
            limit = self._max_chars
            window = limit + _SCRUB_SLACK
            dropped = 0
            if len(text) > window:
                start = len(text) - window
                newline = text.find("\n", start, start + _SCRUB_SLACK)
                start = newline + 1 if newline >= 0 else start
                dropped, text = start, text[start:]
                text = PEM_TAIL.sub(REDACTED, text, count=1)
            text = self._scrub_lines(text, self._text_re)
            total = len(text) + dropped
            if total <= limit:
                return text
            return TRUNCATED_MARKER.format(n=total - limit) + text[-limit:]
        except Exception:
            return f"<unprintable {type_name(text)}>"

    def truncate_head(self, text: str) -> str:
        """Keep the end of ``text`` (a traceback's last lines matter most), marker first.

        Cuts only: ``text`` must already be scrubbed (see :meth:`redact_tail`).
        """
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
                encoded = encode(record)
            except Exception:  # not JSON-safe: make it so first
                safe = self.redact(record)
                record = safe if isinstance(safe, dict) else {"value": safe}
                encoded = encode(record)
            if len(encoded) <= self._max_bytes:
                return record
            return shrink(encoded, self._max_bytes)
        except Exception:
            return {"_truncated": True}

    def bound_json(self, record: dict[str, JSONValue]) -> str:
        """``json.dumps(bound_record(record))``, encoding a record that fits only once."""
        try:
            encoded = encode(record)
        except Exception:
            return encode(self.bound_record(record))
        if len(encoded) <= self._max_bytes:
            return encoded
        try:
            return encode(shrink(encoded, self._max_bytes))
        except Exception:
            return '{"_truncated": true}'

    def dumps(self, record: dict[str, object]) -> str:
        """json.dumps of redact+bound_record; never raises; always valid JSON within the bound."""
        try:
            safe = self.redact(record)
            return self.bound_json(safe if isinstance(safe, dict) else {"value": safe})
        except Exception:
            return '{"_truncated": true}'

    def _scrub(self, text: str, dropped: int = 0) -> str:
        """Scrub, then cut to ``max_chars``: only the window that can show is read."""
        window = self._max_chars + _SCRUB_SLACK
        pattern = self._text_re
        if len(text) > window:
            dropped, text = dropped + len(text) - window, text[:window]
            pattern = TEXT_CUT_RE if pattern is TEXT_RE else pattern
        elif dropped:
            pattern = TEXT_CUT_RE if pattern is TEXT_RE else pattern
        text = self._scrub_lines(text, pattern)
        return truncate(text, self._max_chars, len(text) + dropped)

    def _scrub_lines(self, text: str, pattern: re.Pattern[str]) -> str:
        """Scrub ``text``; a multi-line text line by line, each line scrubbed once per process.

        Failures repeat their tracebacks' lines (the same frames and source lines, in the
        guard's event and in Celery's log record): only lines not seen before are scrubbed.
        Text whose matches could span lines, or cut text, is scrubbed whole.
        """
        if pattern is not TEXT_RE or "\n" not in text or CROSS_LINE_RE.search(text):
            return self._scrub_all(text, pattern)
        seen = self._lines
        out = []
        for line in text.split("\n"):
            scrubbed = seen.get(line)
            if scrubbed is None:
                scrubbed = self._scrub_all(line, pattern)
                if len(line) <= LINE_CACHE_CHARS:
                    if len(seen) >= LINE_CACHE_SIZE:
                        seen.clear()
                    seen[line] = scrubbed
            out.append(scrubbed)
        return "\n".join(out)

    def _scrub_all(self, text: str, pattern: re.Pattern[str]) -> str:
        match = pattern.search(text)
        if match is None:
            return text
        parts: list[str] = []
        pos = 0
        while match is not None:
            start, end = match.span()
            group = match.group
            if group("pair") is not None:
                name = group("name")
                before = text[start - 1: start] if start else ""
                query = before in ("?", "&", ";") and "=" in group("pair")
                if not (self.is_secret_key.in_query(name) if query
                        else self.is_secret_key(name)):
                    parts.append(text[pos: match.start("name") + 1])  # rescan inside
                    pos = match.start("name") + 1
                    match = pattern.search(text, pos)
                    continue
                value = group("value")
                words = key_words(name)
                if is_bare(value) and words and words[-1] in LINE_VALUE_WORDS:
                    newline = text.find("\n", end)
                    end = len(text) if newline < 0 else newline
                parts.append(text[pos:start] + group("pair") + hidden(value))
            elif group("tuple") is not None:
                if not self.is_secret_key(group("tname")):
                    parts.append(text[pos: start + 1])
                    pos = start + 1
                    match = pattern.search(text, pos)
                    continue
                parts.append(text[pos:start] + group("tuple") + hidden(group("tvalue")))
            else:
                prefix = group("scheme") or group("url") or ""
                parts.append(text[pos:start] + prefix + REDACTED)
            pos = end
            match = pattern.search(text, pos)
        parts.append(text[pos:])
        return "".join(parts)

    def _key(self, key: object) -> tuple[str, bool]:
        """A dict key's output form, and whether the value under it is redacted."""
        cached = self._keys.get(key) if type(key) is str else None
        if cached is None:
            text = _key_text(key)
            head = text[: self._max_chars + _SCRUB_SLACK]
            shown = self._scrub(str.__str__(key) if isinstance(key, str) else raw_text(key))
            cached = (shown, self.is_secret_key(head))
            if type(key) is str and len(key) <= 256:
                if len(self._keys) >= KEY_CACHE_SIZE:
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
            return self._scrub(raw_text(value))
        except Exception:
            return f"<unrepresentable {type_name(value)}>"

    def _walk_container(self, value: Any, depth: int, path: set[int]) -> JSONValue:
        limit, total = self._max_items, len(value)
        if isinstance(value, tuple) and isinstance(getattr(type(value), "_fields", None), tuple):
            value = dict(zip(type(value)._fields, value, strict=False))  # a namedtuple
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
        elif _is_pair_list(value, limit):  # header pairs: [("X-Api-Key", "..."), ...]
            items = ((key, REDACTED) if self._key(key)[1] else (key, item)
                     for key, item in itertools.islice(value, limit))
        listed = [self._walk(item, depth, path) for item in items]
        if total > limit:
            listed.append(MORE_ITEMS_MARKER.format(n=total - limit))
        return listed
