"""Redaction and bounded, JSON-safe serialisation, shared by every sink (pure, never raises).

- :mod:`.keys`: which keys name a secret (by their words), the ``redact_keys`` setting.
- :mod:`.patterns`: what a secret looks like in free text (the scrubber's patterns).
- :mod:`.safe_text`: ``repr``/``str`` of any object without raising, cut with a marker.
- :mod:`.bound`: shrinking a record to ``max_record_bytes``.
- :mod:`.redactor`: :class:`Redactor`, which puts them together; built once, then shared.
"""

from .bound import MIN_RECORD_BYTES
from .keys import (
    DEFAULT_REDACT_KEYS,
    QUERY_SECRET_NAMES,
    VALUE_SUFFIXES,
    KeyMatcher,
    key_words,
    parse_redact_keys,
)
from .markers import (
    CYCLE_MARKER,
    DEPTH_MARKER,
    MORE_ITEMS_MARKER,
    MORE_KEYS_KEY,
    OMITTED_MARKER,
    REDACTED,
    TRUNCATED_MARKER,
    JSONValue,
)
from .redactor import Redactor
from .safe_text import exception_message, safe_repr

__all__ = [
    "CYCLE_MARKER",
    "DEFAULT_REDACT_KEYS",
    "DEPTH_MARKER",
    "MIN_RECORD_BYTES",
    "MORE_ITEMS_MARKER",
    "MORE_KEYS_KEY",
    "OMITTED_MARKER",
    "QUERY_SECRET_NAMES",
    "REDACTED",
    "TRUNCATED_MARKER",
    "VALUE_SUFFIXES",
    "JSONValue",
    "KeyMatcher",
    "Redactor",
    "exception_message",
    "key_words",
    "parse_redact_keys",
    "safe_repr",
]
