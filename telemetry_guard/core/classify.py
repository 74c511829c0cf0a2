"""Severity of a failure, decided by ordered rules on the exception (pure, stdlib only).

Default rules match exception classes by ``(module, qualname)`` along the MRO, so that
Celery, billiard, database and client libraries are recognised without importing them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class Severity(enum.IntEnum):
    """How bad a failure is; ordered ``LOW < MEDIUM < HIGH < CRITICAL``."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        """Lowercase name used in metric labels, log fields and Sentry tags."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: Severity | str | int) -> Severity:
        """A Severity from itself, its name (any case) or its number."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            member = cls.__members__.get(value.strip().upper())
            if member is not None:
                return member
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        names = ", ".join(member.label for member in cls)
        raise ValueError(f"unknown severity {value!r}; expected one of {names}")

    def __str__(self) -> str:
        return self.label

    def __format__(self, format_spec: str) -> str:
        return format(self.label, format_spec)


Matcher = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
"""An exception class, a tuple of them, or a predicate on the exception."""

_WORKER_ERRORS = frozenset(
    {
        # celery.exceptions re-exports these from billiard (celery 5.x); both spellings kept.
        ("billiard.exceptions", "WorkerLostError"),
        ("billiard.exceptions", "SoftTimeLimitExceeded"),
        ("billiard.exceptions", "TimeLimitExceeded"),
        ("celery.exceptions", "WorkerLostError"),
        ("celery.exceptions", "SoftTimeLimitExceeded"),
        ("celery.exceptions", "TimeLimitExceeded"),
        # Work no worker did: a periodic run that never came is told, not only counted.
        ("telemetry_guard.exceptions", "PeriodicRunMissed"),
    }
)

_DATABASE_MODULES = (
    "psycopg",
    "psycopg2",
    "sqlalchemy",
    "django.db",
    "pymysql",
    "MySQLdb",
    "sqlite3",
    "asyncpg",
)

# (module prefix, class names): a class matches when its module is the prefix or below it.
_CONNECTION_ERRORS: tuple[tuple[str, frozenset[str]], ...] = (
    ("redis", frozenset({"ConnectionError", "TimeoutError", "BusyLoadingError"})),
    ("kombu.exceptions", frozenset({"OperationalError"})),
    ("amqp.exceptions", frozenset({"ConnectionError", "RecoverableConnectionError"})),
    ("socket", frozenset({"gaierror"})),
    ("requests", frozenset({"ConnectionError", "Timeout"})),
    ("httpx", frozenset({"ConnectError", "NetworkError", "TimeoutException"})),
    ("urllib3", frozenset({"NewConnectionError", "TimeoutError"})),
    ("telemetry_guard.http", frozenset({"TransientHTTPError"})),
)

_BUILTIN_CONNECTION_ERRORS = (ConnectionError, TimeoutError)

_CACHE_LIMIT = 1024
_default_cache: dict[type[BaseException], Severity] = {}


def _within(module: str, prefix: str) -> bool:
    """True when ``module`` is ``prefix`` or a submodule of it."""
    return module == prefix or module.startswith(prefix + ".")


def _default_severity(cls: type[BaseException]) -> Severity:
    """Severity from the default rules, which depend only on the exception's class."""
    if issubclass(cls, MemoryError):
        return Severity.CRITICAL
    mro = [
        (str(getattr(k, "__module__", "")), str(getattr(k, "__qualname__", "")))
        for k in cls.__mro__
    ]
    if any(entry in _WORKER_ERRORS for entry in mro):
        return Severity.HIGH
    for module, _ in mro:
        if any(_within(module, prefix) for prefix in _DATABASE_MODULES):
            return Severity.HIGH
    if issubclass(cls, _BUILTIN_CONNECTION_ERRORS):
        return Severity.MEDIUM
    for module, name in mro:
        for prefix, names in _CONNECTION_ERRORS:
            if name in names and _within(module, prefix):
                return Severity.MEDIUM
    return Severity.LOW


def _cached_default_severity(cls: type[BaseException]) -> Severity:
    severity = _default_cache.get(cls)
    if severity is None:
        severity = _default_severity(cls)
        if len(_default_cache) >= _CACHE_LIMIT:
            _default_cache.clear()
        _default_cache[cls] = severity
    return severity


def _to_predicate(match: Matcher) -> Callable[[BaseException], bool]:
    """Turn a matcher into a predicate, rejecting anything that is not a valid matcher."""
    if isinstance(match, type):
        if not issubclass(match, BaseException):
            raise TypeError(f"matcher class {match!r} is not an exception class")
        exc_type = match
        return lambda exc: isinstance(exc, exc_type)
    if isinstance(match, tuple):
        if not all(isinstance(k, type) and issubclass(k, BaseException) for k in match):
            raise TypeError(f"matcher tuple {match!r} must hold only exception classes")
        exc_types = match
        return lambda exc: isinstance(exc, exc_types)
    if callable(match):
        return match
    raise TypeError(
        f"matcher must be an exception class, a tuple of them or a predicate, got {match!r}"
    )


class Classifier:
    """Ordered rules, first match wins; user rules come before the defaults.

    With a ``fallback`` classifier, an exception no rule here matches is classified by it
    (its rules, then its defaults): the guard's classifier falls back to the process-wide
    :data:`DEFAULT_CLASSIFIER`.
    """

    def __init__(self, *, defaults: bool = True, fallback: Classifier | None = None) -> None:
        self._defaults = defaults
        self._fallback = fallback
        self._rules: tuple[tuple[Callable[[BaseException], bool], Severity], ...] = ()

    def __repr__(self) -> str:
        return f"Classifier(rules={len(self._rules)}, defaults={self._defaults})"

    def register(self, match: Matcher, severity: Severity | str) -> None:
        """Add a rule after the user rules already registered, before the defaults."""
        rule = (_to_predicate(match), Severity.parse(severity))
        self._rules = (*self._rules, rule)

    def classify(self, exc: BaseException) -> Severity:
        """Severity of ``exc``; never raises (a raising predicate counts as no match)."""
        for predicate, severity in self._rules:
            try:
                if predicate(exc):
                    return severity
            except Exception:
                continue
        if self._fallback is not None:
            return self._fallback.classify(exc)
        if not self._defaults:
            return Severity.LOW
        try:
            return _cached_default_severity(type(exc))
        except Exception:
            return Severity.LOW


def escalate(severity: Severity, floor: Severity) -> Severity:
    """``severity`` raised to at least ``floor``."""
    return Severity(max(severity, floor))


DEFAULT_CLASSIFIER = Classifier()
"""The classifier behind :func:`classify`; rules registered on it apply process-wide."""


def classify(exc: BaseException) -> Severity:
    """Severity of ``exc`` by the default classifier; never raises."""
    return DEFAULT_CLASSIFIER.classify(exc)
