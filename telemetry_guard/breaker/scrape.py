"""Every breaker's state at once, for a metrics scrape: one round trip per Redis (two on a
Redis Cluster, whose pipelines cannot carry TIME), no script."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..stores.redis_client import is_cluster, server_time_ms, time_reply_ms
from .hooks import STORE_SINK, report_error
from .redis_hash import FIELDS, stored_state
from .redis_store import RedisBreakerStore, breaker_client

if TYPE_CHECKING:
    from .breaker import CircuitBreaker


def states(breakers: Iterable[CircuitBreaker]) -> dict[str, str | None]:
    """Each breaker's current state by name, for a scrape: one round trip per Redis in all.

    Breakers kept in memory answer from this process; None marks a breaker whose stored
    state is invalid (see ``InvalidBreakerState``). Never raises.
    """
    found: dict[str, str | None] = {}
    shared: list[RedisBreakerStore] = []
    for breaker in breakers:
        store = breaker._store
        if isinstance(store, RedisBreakerStore):
            shared.append(store)
        else:
            try:
                found[breaker.name] = store.snapshot().state
            except Exception:
                found[breaker.name] = None
    found.update(read_states(shared))
    return found


def read_states(stores: Iterable[RedisBreakerStore]) -> dict[str, str | None]:
    """The stored state of each breaker by name, one pipelined round trip per Redis URL.

    No script runs: each hash is read with HMGET (cluster-friendly: one key per command) and
    checked as the script checks it; an invalid hash is None. When a Redis cannot be read,
    its breakers get the state this process last saw, and the error is reported once.
    """
    by_url: dict[str, list[RedisBreakerStore]] = {}
    found: dict[str, str | None] = {}
    for store in stores:
        url = store.url
        if url is None:
            found[store.name] = store.local_state()
        else:
            by_url.setdefault(url, []).append(store)
    for url, group in by_url.items():
        try:
            client = breaker_client(url)
            pipe = client.pipeline(transaction=False)
            clustered = is_cluster(client)
            if not clustered:
                pipe.time()  # in the same round trip; a cluster's pipeline cannot carry it
            for store in group:
                pipe.hmget(store.keys[0], FIELDS)
            replies = pipe.execute()
            now_ms = server_time_ms(client) if clustered else time_reply_ms(replies.pop(0))
            read = [stored_state(values, now_ms) for values in replies]
            found.update(zip((store.name for store in group), read, strict=True))
        except Exception as exc:
            report_error(STORE_SINK, exc)
            for store in group:
                found[store.name] = store.local_state()
    return found
