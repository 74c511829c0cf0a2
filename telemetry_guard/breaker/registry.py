"""Breakers by name, and the Redis URL that breakers built with ``redis_url=None`` use."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .breaker import CircuitBreaker

_lock = threading.Lock()
_breakers: dict[str, CircuitBreaker] = {}
_default_redis_url: str | None = None
_pending_setup: Callable[[], None] | None = None


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


def set_pending_setup(callback: Callable[[], None] | None) -> None:
    """Register the set-up of a guard that has not read its settings yet.

    A breaker that needs the default Redis URL before then runs it (once), so a breaker
    used before the Celery app is configured still shares the guard's Redis.
    """
    global _pending_setup
    _pending_setup = callback


def get_default_redis_url() -> str | None:
    """The Redis URL breakers built with ``redis_url=None`` use; None until the guard sets it."""
    global _pending_setup
    if _default_redis_url is None and _pending_setup is not None:
        callback, _pending_setup = _pending_setup, None
        callback()
    return _default_redis_url
