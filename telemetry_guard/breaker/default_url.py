"""The Redis URL that breakers built with ``redis_url=None`` use: the one the guard sets.

``set_default_redis_url`` (in ``breaker.py``) changes it and reconnects the breakers using it.
"""

from __future__ import annotations

from collections.abc import Callable

_default_redis_url: str | None = None
_pending_setup: Callable[[], None] | None = None


def replace_default_redis_url(url: str | None) -> bool:
    """Make ``url`` the default; False when it already was."""
    global _default_redis_url
    if url == _default_redis_url:
        return False
    _default_redis_url = url
    return True


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
