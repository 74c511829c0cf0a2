"""Every Redis client the package uses, built in one place.

Timeouts, the retry on a dropped connection, health checks and fork safety are decided
here: a client is shared per process and per (URL, options, timeout, retries), and a forked
child starts with none (a pool is never shared across ``fork()``). One URL may be a single
server (``redis://``, ``rediss://``, ``unix://``), a Sentinel-monitored master
(``sentinel://``, whose client follows a failover by asking the sentinels again on its next
connection) or a Redis Cluster (``cluster: True``); see ``redis_options``.

The options of a URL are registered once per process (:func:`use_redis_options`, by the
guard and by the CLI); every client built for that URL then gets them, so a component that
knows only the URL (a breaker, the error log, the throttle) connects as the user configured.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .redis_options import RedisTarget, check_redis_target, mask_url

if TYPE_CHECKING:
    import redis

__all__ = ["DEFAULT_TIMEOUT", "follows_failover", "is_cluster", "mask_url", "new_redis_client",
           "redis_client", "redis_target", "server_time_ms", "time_reply_ms",
           "use_redis_options"]

#: Seconds a command or a connection attempt may take, unless the caller says otherwise.
DEFAULT_TIMEOUT = 2.0
#: Seconds a pooled connection may sit idle before it is checked with a PING on next use.
HEALTH_CHECK_INTERVAL = 30

_lock = threading.Lock()
_clients: dict[tuple[str, float, float, int], Any] = {}
_options: dict[str, RedisTarget] = {}


def _forget_clients() -> None:
    """In a forked child: drop the parent's clients (their sockets belong to the parent)."""
    global _lock
    _lock = threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_forget_clients)


def use_redis_options(url: str, options: Mapping[str, Any] | None) -> RedisTarget:
    """Check ``url`` with ``options`` and use them for every client of ``url`` in this process.

    Raises ``RedisOptionsError`` (a ValueError) when they cannot be used together.
    """
    target = check_redis_target(url, options)
    _options[url] = target
    return target


def redis_target(url: str, options: Mapping[str, Any] | None = None) -> RedisTarget:
    """``url`` with ``options``, or with the options registered for it (none: plain)."""
    if options is not None:
        return check_redis_target(url, options)
    target = _options.get(url)
    return target if target is not None else check_redis_target(url, None)


def redis_client(url: str, *, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float | None = None, retries: int = 1) -> Any:
    """This process's client for ``url``: built once, shared by every caller asking alike.

    ``retries`` is how many times a command is sent again on a dropped connection (never
    on a timeout: a command that timed out may have run).
    """
    target = _options.get(url)
    connect = timeout if connect_timeout is None else connect_timeout
    key = (url if target is None else target.key, float(timeout), float(connect), retries)
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
                     connect_timeout: float | None = None, retries: int = 1,
                     options: Mapping[str, Any] | None = None) -> Any:
    """A client of its own (a probe, a tool's one-off connection), built like the shared ones.

    ``options`` defaults to those registered for ``url``. The client is a ``redis.Redis``
    (a Sentinel master's too) or a ``redis.cluster.RedisCluster``.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    target = redis_target(url, options)
    connect = timeout if connect_timeout is None else connect_timeout
    retry_errors = (redis.ConnectionError,)
    common: dict[str, Any] = {
        "socket_timeout": timeout, "socket_connect_timeout": connect,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "retry": Retry(NoBackoff(), retries, retry_errors) if retries else None,
    }
    if target.mode == "cluster":
        from redis.cluster import RedisCluster

        common["retry"] = Retry(NoBackoff(), retries, retry_errors)
        return RedisCluster.from_url(url, **{**common, **target.client_kwargs()})
    if target.mode == "sentinel":
        return _sentinel_master(target, common)
    return redis.Redis.from_url(url, **{**common, **target.client_kwargs()})


def _sentinel_master(target: RedisTarget, common: dict[str, Any]) -> redis.Redis:
    """The master a Sentinel group monitors: each new connection asks the sentinels where
    it is, and a connection to a demoted master is dropped (redis-py's SentinelConnectionPool)."""
    from redis.sentinel import Sentinel

    sentinel_kwargs = {"socket_timeout": common["socket_timeout"],
                       "socket_connect_timeout": common["socket_connect_timeout"],
                       **target.options.get("sentinel_kwargs", {})}
    kwargs = {**common, **target.sentinel_master_kwargs(), **target.client_kwargs()}
    sentinel = Sentinel(target.sentinels(), sentinel_kwargs=sentinel_kwargs, **kwargs)
    client: redis.Redis = sentinel.master_for(target.options["master_name"], **kwargs)
    return client


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster (its pipelines included)."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def follows_failover(client: Any) -> bool:
    """Whether ``client`` is a Sentinel master's: its writes may be waited on by a replica."""
    from redis.sentinel import SentinelConnectionPool

    return isinstance(getattr(client, "connection_pool", None), SentinelConnectionPool)


def server_time_ms(client: Any) -> int:
    """Redis' clock in milliseconds (on a cluster: any node's, as a cluster has no one clock)."""
    reply = client.time()
    if isinstance(reply, dict):
        reply = next(iter(reply.values()))
    return time_reply_ms(reply)


def time_reply_ms(reply: Any) -> int:
    """A ``TIME`` reply (seconds, microseconds) in milliseconds."""
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000
