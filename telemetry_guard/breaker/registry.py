"""Breakers by name, and the Redis URL that breakers built with ``redis_url=None`` use."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .breaker import CircuitBreaker

_lock = threading.Lock()
_breakers: dict[str, CircuitBreaker] = {}
_default_redis_url: str | None = None


def register(breaker: CircuitBreaker) -> None:
    """Make ``breaker`` the one ``get_breaker(breaker.name)`` returns (the latest wins)."""
    with _lock:
        _breakers[breaker.name] = breaker


def unregister(breaker: CircuitBreaker) -> bool:
    """Forget ``breaker`` if it is the one registered under its name; True when it was.

    Its state in Redis stays: a breaker built again under that name reads it.
    """
    with _lock:
        if _breakers.get(breaker.name) is breaker:
            del _breakers[breaker.name]
            return True
        return False


def get_breaker(name: str) -> CircuitBreaker | None:
    """The breaker last constructed with this name in this process, or None."""
    return _breakers.get(name)


def all_breakers() -> tuple[CircuitBreaker, ...]:
    """Every registered breaker, sorted by name."""
    with _lock:
        return tuple(_breakers[name] for name in sorted(_breakers))


def set_default_redis_url(url: str | None) -> None:
    """Set the Redis URL of this process's TelemetryGuard, used by breakers without their own.

    Breakers already connected through the previous default reconnect on their next call.
    """
    global _default_redis_url
    if url == _default_redis_url:
        return
    _default_redis_url = url
    for breaker in all_breakers():
        breaker._default_redis_url_changed()


def get_default_redis_url() -> str | None:
    """The Redis URL breakers built with ``redis_url=None`` use; None until the guard sets it."""
    return _default_redis_url
