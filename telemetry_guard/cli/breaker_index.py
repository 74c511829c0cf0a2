"""Finding breakers for the CLI: those the app defines, and those found in the shared Redis.

A breaker's hash is ``<prefix>breaker:{<name>}`` (``breaker.redis_hash``); the scan runs on
every master of a Redis Cluster.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import click
import redis

from ..breaker import CircuitBreaker, all_breakers, get_breaker
from ..breaker.redis_hash import FIELDS, breaker_hash_key, breaker_name_of, stored_problems
from ..breaker.state import CLOSED
from ..stores.keys import glob_escape
from ..stores.redis_client import mask_url, new_redis_client, server_time_ms
from .context import EXIT_PROBLEMS, UsageError

if TYPE_CHECKING:
    from ..integration.config import Settings

#: Seconds the CLI's own Redis client waits to connect and for each reply.
REDIS_TIMEOUT = 3.0
#: Keys per SCAN step.
SCAN_COUNT = 500
#: Of an invalid hash, at most this many fields are shown, each cut to ``RAW_VALUE_CHARS``.
RAW_FIELDS = 32
RAW_VALUE_CHARS = 64

#: Breakers this module built for names found only in Redis (they register themselves, but
#: stay "redis" breakers whose thresholds are unknown).
_built: dict[str, CircuitBreaker] = {}


class RedisUnavailable(click.ClickException):
    """The shared breaker state cannot be read or changed: exit code 1."""

    exit_code = EXIT_PROBLEMS


class BreakerIndex:
    """The breakers the app defines and those found in the shared Redis."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis_url: str | None = settings.redis_url
        self.key_prefix: str = settings.key_prefix
        self._client: redis.Redis | None = None
        #: URLs found unreachable, with the error, so each is tried once.
        self._down: dict[str, str] = {}

    def client(self, url: str | None = None) -> redis.Redis:
        """A Redis client for ``url`` (default: the guard's), checked with PING."""
        url = url or self.redis_url
        if url is None:
            raise UsageError("no Redis configured (telemetry_guard_redis_url, or a Redis "
                             "broker): breaker state is not shared")
        if self._client is not None and url == self.redis_url:
            return self._client
        if url in self._down:
            raise RedisUnavailable(self._down[url])
        client = new_redis_client(url, timeout=REDIS_TIMEOUT)
        try:
            client.ping()
        except redis.RedisError as exc:
            self._down[url] = (f"cannot reach Redis at {mask_url(url)}: "
                               f"{type(exc).__name__}: {exc}")
            raise RedisUnavailable(self._down[url]) from None
        if url == self.redis_url:
            self._client = client
        return client

    def url_of(self, breaker: CircuitBreaker) -> str | None:
        """The Redis URL a breaker's state lives in."""
        return breaker.redis_url or self.redis_url

    def key_of(self, breaker: CircuitBreaker) -> str:
        """The Redis hash holding a breaker's state."""
        return breaker_hash_key(breaker.key_prefix, breaker.name)

    def in_redis(self) -> list[str]:
        """Names of breakers whose state hash exists under the guard's prefix."""
        if self.redis_url is None:
            return []
        client = self.client()
        pattern = glob_escape(f"{self.key_prefix}breaker:{{") + "*}"
        try:
            keys = list(client.scan_iter(match=pattern, count=SCAN_COUNT))
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.type(key)
            types = pipe.execute()
        except redis.RedisError as exc:
            raise RedisUnavailable(f"cannot scan Redis at {mask_url(self.redis_url)}: "
                                   f"{type(exc).__name__}: {exc}") from None
        names = []
        for key, kind in zip(keys, types, strict=True):
            # the :permits zset and :window bitmap of each breaker are not hashes
            name = breaker_name_of(self.key_prefix, _text(key) or "")
            if name is not None and kind in (b"hash", "hash"):
                names.append(name)
        return sorted(names)

    def every(self) -> list[tuple[CircuitBreaker, str]]:
        """Every breaker with where it is known from: ``app`` or ``redis``."""
        found = {b.name: (b, _source(b)) for b in all_breakers()}
        for name in self.in_redis():
            if name not in found:
                found[name] = (self._build(name), "redis")
        return [found[name] for name in sorted(found)]

    def find(self, name: str) -> tuple[CircuitBreaker, str]:
        """The breaker called ``name``: registered, or existing in Redis; else a usage error."""
        breaker = get_breaker(name)
        if breaker is not None:
            return breaker, _source(breaker)
        if self.redis_url is not None:
            key = breaker_hash_key(self.key_prefix, name)
            try:
                kind = self.client().type(key)
            except redis.RedisError as exc:
                raise RedisUnavailable(f"cannot reach Redis at {mask_url(self.redis_url)}: "
                                       f"{type(exc).__name__}: {exc}") from None
            if kind in (b"hash", "hash"):
                return self._build(name), "redis"
        raise UsageError(f"unknown breaker {name!r}: not defined by the app and not in Redis "
                         f"(try `breakers list`)")

    def _build(self, name: str) -> CircuitBreaker:
        breaker = _built[name] = CircuitBreaker(name, key_prefix=self.key_prefix)
        return breaker

    def opened_at(self, breaker: CircuitBreaker) -> str | None:
        """When the breaker last opened (ISO 8601 UTC, Redis server time), if it is not closed."""
        url = self.url_of(breaker)
        if breaker.storage != "redis" or url is None:
            return None
        try:
            state, opened = self.client(url).hmget(self.key_of(breaker), "state", "opened_at")
        except redis.RedisError:
            return None
        if state in (None, CLOSED.encode()) or not opened:
            return None
        try:
            moment = dt.datetime.fromtimestamp(int(opened) / 1000, dt.timezone.utc)
        except (ValueError, OverflowError, OSError):
            return None
        return moment.isoformat(timespec="milliseconds")

    def invalid_fields(self, breaker: CircuitBreaker) -> tuple[tuple[str, ...], dict[str, str]]:
        """The stored fields a breaker cannot use (none: it is valid), and the hash as stored."""
        client = self.client(self.url_of(breaker))
        pipe = client.pipeline(transaction=False)
        pipe.type(self.key_of(breaker))
        pipe.hgetall(self.key_of(breaker))
        kind, stored = pipe.execute(raise_on_error=False)
        now_ms = server_time_ms(client)
        if kind not in (b"hash", b"none", "hash", "none"):
            return ("type",), {"type": _printable(kind if isinstance(kind, bytes)
                                                  else str(kind).encode())}
        if isinstance(stored, Exception):
            raise stored
        fields = {name: stored.get(name.encode()) for name in FIELDS}
        problems = stored_problems(fields, now_ms)
        if not problems:
            return (), {}
        raw = {}
        for name in sorted(stored)[:RAW_FIELDS]:
            raw[_printable(name)] = _printable(stored[name])
        return problems, raw

    def stored_state(self, breaker: CircuitBreaker) -> tuple[str | None, str | None]:
        """State and mode as written in Redis, read with this CLI's own client."""
        state, mode = self.client(self.url_of(breaker)).hmget(
            self.key_of(breaker), "state", "mode")
        return _text(state), _text(mode)


def _printable(value: bytes) -> str:
    """Stored bytes as one line of printable text, escapes for the rest, cut to a bound."""
    text = value.decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)
    return text if len(text) <= RAW_VALUE_CHARS else text[: RAW_VALUE_CHARS - 1] + "…"


def _text(value: bytes | str | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or None


def _source(breaker: CircuitBreaker) -> str:
    return "redis" if _built.get(breaker.name) is breaker else "app"
