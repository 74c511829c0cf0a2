"""Which keys name a secret: the secret terms, the ``redact_keys`` setting, the key matcher.

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
"""

from __future__ import annotations

import re
from collections.abc import Iterable

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
#: How many keys a cache of key decisions holds before it starts over.
KEY_CACHE_SIZE = 4096
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


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
                if len(self._cache) >= KEY_CACHE_SIZE:
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
