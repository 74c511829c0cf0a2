"""Every Redis client the package uses, built in one place.

Timeouts, the retry on a dropped connection, health checks and fork safety are decided
here: a client is shared per process and per (URL, timeout, retries), and a forked child
starts with none (a pool is never shared across ``fork()``).
"""

from __future__ import annotations

import os
import re
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

#: Seconds a command or a connection attempt may take, unless the caller says otherwise.
DEFAULT_TIMEOUT = 2.0
#: Seconds a pooled connection may sit idle before it is checked with a PING on next use.
HEALTH_CHECK_INTERVAL = 30

_lock = threading.Lock()
_clients: dict[tuple[str, float, float, int], redis.Redis] = {}
_PASSWORD_PARAM = re.compile(r"([?&;]password=)[^&;#]*", re.IGNORECASE)


def _forget_clients() -> None:
    """In a forked child: drop the parent's clients (their sockets belong to the parent)."""
    global _lock
    _lock = threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_forget_clients)


def redis_client(url: str, *, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float | None = None, retries: int = 1) -> redis.Redis:
    """This process's client for ``url``: built once, shared by every caller asking alike.

    ``retries`` is how many times a command is sent again on a dropped connection (never
    on a timeout: a command that timed out may have run).
    """
    connect = timeout if connect_timeout is None else connect_timeout
    key = (url, float(timeout), float(connect), retries)
    client = _clients.get(key)
    if client is not None:
        return client
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = new_redis_client(
                url, timeout=timeout, connect_timeout=connect, retries=retries)
        return client


def new_redis_client(url: str, *, timeout: float = DEFAULT_TIMEOUT,
                     connect_timeout: float | None = None, retries: int = 1) -> redis.Redis:
    """A client of its own (a probe, a tool's one-off connection), built like the shared ones."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url, socket_timeout=timeout,
        socket_connect_timeout=timeout if connect_timeout is None else connect_timeout,
        retry=Retry(NoBackoff(), retries, (redis.ConnectionError,)) if retries else None,
        health_check_interval=HEALTH_CHECK_INTERVAL)


def mask_url(url: str | None) -> str | None:
    """``url`` with its user information and any ``password=`` parameter replaced by ``***``."""
    if not url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    tail = _PASSWORD_PARAM.sub(r"\1***", tail)
    return f"{scheme}://{netloc}{slash}{tail}"
