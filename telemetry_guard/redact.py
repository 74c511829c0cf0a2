"""Redaction and bounded, JSON-safe serialisation, shared by every sink (pure, never raises).

:meth:`Redactor.redact` maps: a value under a secret key (see below) → :data:`REDACTED`; str
values and keys → scrubbed like :meth:`Redactor.redact_text`, cut to ``max_value_chars`` plus
:data:`TRUNCATED_MARKER`; a namedtuple → a dict of its fields (redacted by field name); a list
or tuple of ``(name, value)`` pairs whose names are str or bytes (header lists, ASGI headers) →
a list of ``[name, value]`` pairs, a value redacted by its name; other tuples → lists;
set/frozenset → list, sorted if its elements are orderable, else in iteration order; bytes →
repr of the first ``max_value_chars`` bytes; NaN/±inf → ``"nan"``/``"inf"``/``"-inf"``; ints
over 256 bits → hex; anything else → its scrubbed :func:`safe_repr`; a cycle →
:data:`CYCLE_MARKER`; nesting past ``max_depth`` → :data:`DEPTH_MARKER`; past ``max_items`` a
list ends with ``"<N more items>"`` and a dict gets a ``"<more keys>": N`` entry.

Secret keys are matched by their words, not by substrings. A key is split into lowercase words
(``snake_case``, ``camelCase``, ``kebab-case``, ``X-Header-Names``, ``dotted.names``, digits
apart); trailing words that only qualify a value (``hash``, ``confirmation``, ``b64``, a
number, ...: :data:`VALUE_SUFFIXES`) are set aside; the key is secret when its last words are
one of the secret terms (:data:`DEFAULT_REDACT_KEYS`: ``password``, ``access token`` ...), or
its last word ends with a one-word term of four letters or more (``dbpassword``,
``oauth``). So ``db_password``, ``X-Api-Key``, ``authToken``, ``http_auth`` and
``password_confirmation`` are secret; ``author_id``, ``auth_method``, ``max_tokens``,
``token_count``, ``cookie_consent`` and ``password_reset_sent`` are not. In a query string
(``?`` or ``&`` before the name) ``key``, ``sig`` and ``code`` are secret as well. A compiled
``re.Pattern`` given instead of terms is searched in the raw key (the old behaviour).

:meth:`Redactor.redact_text` scrubs free text: PEM private-key blocks (whole), JWTs, well-known
API key shapes, ``Bearer``/``Basic`` credentials, URL passwords (the userinfo ends at the last
``@`` before the host, so passwords may hold ``/`` and ``@``), and ``name=value``,
``name: value``, ``"name": "value"`` (also with escaped quotes) and ``("name", "value")`` or
``["name", "value"]`` pairs
whose name is a secret key; after ``Authorization``, ``Proxy-Authorization``, ``auth`` and
``Cookie`` the rest of the line is the value (any scheme: ``Token``, ``Digest``,
``AWS4-HMAC-SHA256 ...``). Text is scrubbed before it is cut, never the other way round.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
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

#: Secret words and word pairs: a key whose last words are one of them is secret.
DEFAULT_REDACT_KEYS: tuple[str, ...] = (
    "password", "passwords", "passwd", "pwd", "passphrase", "secret", "secrets", "token",
    "access tokens", "refresh tokens", "auth tokens", "api tokens", "auth", "authorization",
    "authentication", "credential", "credentials", "cookie", "cookies", "session",
    "session id", "sessionid", "session key", "apikey", "api key", "api keys", "access key",
    "accesskey", "secret key", "secretkey", "private key", "privatekey", "signing key",
    "encryption key", "master key", "account key", "auth key", "card number", "cardnumber",
    "credit card", "creditcard", "cvv", "cvc", "signature", "otp", "ssn",
)  # fmt: skip
#: Trailing words that qualify a value without changing what it is (``password_hash``).
VALUE_SUFFIXES = frozenset({
    "value", "val", "str", "string", "raw", "plain", "plaintext", "text", "hash", "hashed",
    "digest", "enc", "encrypted", "b64", "base64", "hex", "bytes", "pem", "der", "data",
    "confirm", "confirmation", "again", "repeat", "verify", "input",
})  # fmt: skip
#: Query-string parameters that are secret besides the secret keys (``?key=``, ``&sig=``).
QUERY_SECRET_NAMES = frozenset({"key", "sig", "code"})
#: Keys whose value runs to the end of the line in free text (``Authorization: Digest a, b``).
_LINE_VALUE_WORDS = frozenset({"authorization", "auth", "cookie"})

_Record: TypeAlias = "dict[str, Any]"
_Strings: TypeAlias = "list[tuple[Any, Any, str]]"  # (parent, key, text) of string leaves
_Containers: TypeAlias = "list[tuple[int, Any, Any, tuple[int, ...]]]"  # size, parent, key, above
_SCRUB_SLACK = 512  # scrubbed past the cut (patterns there also end at the cut: PEM, URLs)
_MAX_INT_BITS = 256
_KEY_CACHE_SIZE = 4096
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_TOKENS = (
    r"[sr]k_(?:live|test)_[0-9A-Za-z]{8,}"  # Stripe
    r"|sk-[0-9A-Za-z_-]{20,}"  # OpenAI and alike
    r"|gh[pousr]_[0-9A-Za-z]{20,}|github_pat_\w{20,}"  # GitHub
    r"|glpat-[0-9A-Za-z_-]{20,}"  # GitLab
    r"|xox[baprs]-[0-9A-Za-z-]{10,}"  # Slack
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|SG\.[\w-]{16,}\.[\w-]{16,}"  # SendGrid
    r"|npm_[0-9A-Za-z]{36}|pypi-[\w-]{50,}"  # npm, PyPI
)
_PEM = r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
_PEM_END = r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
_QUOTED = r"""b?"(?:[^"\\\n]|\\.)*"?|b?'(?:[^'\\\n]|\\.)*'?"""
_TEXT_SOURCE = (
    rf"(?P<pem>(?s:{_PEM}.*?(?:{_PEM_END}|\Z)))"
    r"|(?P<jwt>(?<![\w-])eyJ[\w-]{4,}\.[\w-]{4,}(?:\.[\w-]*)?)"
    rf"|(?P<token>(?<![0-9A-Za-z])(?:{_TOKENS})(?![0-9A-Za-z]))"
    r"|(?P<scheme>\b(?i:bearer)\s+|\bBasic\s+(?=[A-Za-z0-9+/]{6}))[\w.~+/-]+=*"
    r"|(?P<url>\b[A-Za-z][\w+.-]{0,30}://[^\s:/?#]*:)[^\s?#]+(?=@{url_end})"
    rf"|(?P<tuple>[(\[]\s*b?(?P<tq>[\"'])(?P<tname>[\w.-]+)(?P=tq)\s*,\s*)(?P<tvalue>{_QUOTED})"
    r"|(?P<pair>(?:\\[nrt]|(?<![\w.\\-]))(?P<nq>\\*[\"'])?(?P<name>[A-Za-z_][\w.-]*)"
    r"(?(nq)(?P=nq))[ \t]*[:=][ \t]*)"
    r"(?P<value>(?P<esc>\\+)(?P<eq>[\"'])(?:(?!(?P=esc)(?P=eq)).)*(?:(?P=esc)(?P=eq))?"
    rf"|{_QUOTED}"
    r"|\([^()\n]*\)?|\[[^\[\]\n]*\]?|\{[^{}\n]*\}?"
    r"|[^\s\"',;&)}\]]+)"
)
_PEM_TAIL = re.compile(rf"(?s:\A(?:(?!-----BEGIN).)*?{_PEM_END})")  # a block cut at its start


def _compile_text(url_end: str) -> re.Pattern[str]:
    return re.compile(_TEXT_SOURCE.replace("{url_end}", url_end))


#: The scrubber; the second form is for text cut at its end (a password's ``@`` may be gone).
_TEXT_RE = _compile_text("")
_TEXT_CUT_RE = _compile_text(r"|\Z")


def key_words(key: str) -> tuple[str, ...]:
    """The lowercase words of a key: ``"X-Api-Key"`` → ``("x", "api", "key")``."""
    return tuple(word.lower() for word in _WORD.findall(key))


def _terms(keys: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(keys, str):
        keys = keys.split(",")
    terms = tuple(str(term).strip() for term in keys if str(term).strip())
    for term in terms:
        if not re.fullmatch(r"[\w .-]+", term) or not key_words(term):
            raise ValueError(f"secret key terms are words such as 'api_key', not {term!r} "
                             "(give a compiled re.Pattern for a regular expression)")
    return terms


def parse_redact_keys(value: object) -> tuple[str, ...] | re.Pattern[str]:
    """The ``redact_keys`` setting: terms from a list or a comma-separated string; a compiled
    pattern, or a string starting with ``re:`` (compiled case-insensitively), as it is."""
    if isinstance(value, re.Pattern):
        return value
    if isinstance(value, str) and value.startswith("re:"):
        return re.compile(value[3:], re.I)
    if isinstance(value, str) or (isinstance(value, Iterable) and not isinstance(value, bytes)):
        return _terms(value)
    raise ValueError("must be a list of secret words, a comma-separated string or a pattern")


class KeyMatcher:
    """Decides whether a key names a secret (by words; see the module docstring); cached."""

    def __init__(self, keys: str | Iterable[str] | re.Pattern[str] = DEFAULT_REDACT_KEYS) -> None:
        keys = parse_redact_keys(keys)
        self._pattern = keys if isinstance(keys, re.Pattern) else None
        terms = [] if isinstance(keys, re.Pattern) else [key_words(term) for term in keys]
        self._terms = frozenset(terms)
        self._lengths = sorted({len(term) for term in terms}, reverse=True)
        self._suffixes = tuple(t[0] for t in terms if len(t) == 1 and len(t[0]) >= 4)
        self._cache: dict[str, bool] = {}

    def __call__(self, key: str) -> bool:
        """Whether the value under ``key`` is a secret."""
        found = self._cache.get(key)
        if found is None:
            found = self._match(key)
            if len(key) <= 256:
                if len(self._cache) >= _KEY_CACHE_SIZE:
                    self._cache.clear()
                self._cache[key] = found
        return found

    def in_query(self, name: str) -> bool:
        """Whether a query-string parameter ``name`` is a secret."""
        return self(name) or name.lower() in QUERY_SECRET_NAMES

    def _match(self, key: str) -> bool:
        if self._pattern is not None:
            return self._pattern.search(key[: 4 * 1024]) is not None
        words = list(key_words(key[:1024]))
        while len(words) > 1 and (words[-1] in VALUE_SUFFIXES or words[-1].isdigit()):
            words.pop()
        if not words:
            return False
        for n in self._lengths:
            if len(words) >= n and tuple(words[-n:]) in self._terms:
                return True
        return words[-1].endswith(self._suffixes)


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


def _key_text(key: object) -> str:
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, (bytes, bytearray)):
        return bytes(key[:1024]).decode("utf-8", "replace")
    return _raw_text(key)


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
        self._text_re = _TEXT_RE
        self._max_chars = max_value_chars
        self._max_bytes = max_record_bytes
        self._max_depth = max_depth
        self._max_items = max_items
        self._keys: dict[str, tuple[str, bool]] = {}

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
            return self._scrub(str.__str__(text) if is_str else _raw_text(text, is_exc))
        except Exception:
            return f"<unprintable {_type_name(text)}>"

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
                text = _PEM_TAIL.sub(REDACTED, text, count=1)
            text = self._scrub_all(text, self._text_re)
            total = len(text) + dropped
            if total <= limit:
                return text
            return TRUNCATED_MARKER.format(n=total - limit) + text[-limit:]
        except Exception:
            return f"<unprintable {_type_name(text)}>"

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
        """Scrub, then cut to ``max_chars``: only the window that can show is read."""
        window = self._max_chars + _SCRUB_SLACK
        pattern = self._text_re
        if len(text) > window:
            dropped, text = dropped + len(text) - window, text[:window]
            pattern = _TEXT_CUT_RE if pattern is _TEXT_RE else pattern
        elif dropped:
            pattern = _TEXT_CUT_RE if pattern is _TEXT_RE else pattern
        text = self._scrub_all(text, pattern)
        return _truncate(text, self._max_chars, len(text) + dropped)

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
                if _is_bare(value) and words and words[-1] in _LINE_VALUE_WORDS:
                    newline = text.find("\n", end)
                    end = len(text) if newline < 0 else newline
                parts.append(text[pos:start] + group("pair") + _hidden(value))
            elif group("tuple") is not None:
                if not self.is_secret_key(group("tname")):
                    parts.append(text[pos: start + 1])
                    pos = start + 1
                    match = pattern.search(text, pos)
                    continue
                parts.append(text[pos:start] + group("tuple") + _hidden(group("tvalue")))
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
            shown = self._scrub(str.__str__(key) if isinstance(key, str) else _raw_text(key))
            cached = (shown, self.is_secret_key(head))
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


def _hidden(value: str) -> str:
    """``[REDACTED]`` in the quotes ``value`` had (``'x'``, ``b"x"``, ``\\"x\\"``)."""
    if value[0] == "\\":
        quote = value[: len(value) - len(value.lstrip("\\")) + 1]
        return quote + REDACTED + quote
    if value[0] in "\"'":
        return value[0] + REDACTED + value[0]
    if value[:2] in ('b"', "b'"):
        return value[:2] + REDACTED + value[1]
    return REDACTED


def _is_bare(value: str) -> bool:
    """Whether a text value is unquoted and unbracketed (a header value, a word)."""
    return value[0] not in "\"'\\([{" and value[:2] not in ('b"', "b'")


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
