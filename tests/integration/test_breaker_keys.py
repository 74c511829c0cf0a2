"""Breaker keys in Redis expire when idle, states are read in one round trip, hosts are bounded."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from telemetry_guard.breaker import CircuitBreaker, get_breaker, states
from telemetry_guard.breaker.redis_hash import KEY_TTL_MIN, key_ttl
from telemetry_guard.breaker.state import BreakerConfig
from telemetry_guard.http import HostBreakers
from tests.breakers import CountingConnection
from tests.servers import free_port

PREFIX = "telemetry_guard:breaker:"


def hkey(name: str, suffix: str = "") -> str:
    """A breaker's key as Redis holds it: hash-tagged with the breaker's name."""
    return f"{PREFIX}{{{name}}}{suffix}"
DAY_MS = int(KEY_TTL_MIN * 1000)


def unique(label: str) -> str:
    return f"keys-{label}-{uuid.uuid4().hex[:8]}"


def fail(breaker: CircuitBreaker) -> None:
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)


def ttls(url: str, name: str) -> dict[str, int]:
    """PTTL of each of the breaker's keys that exists (-1: no expiry)."""
    client = redis.Redis.from_url(url)
    found = {}
    for suffix in ("", ":permits", ":window"):
        ttl = client.pttl(hkey(name, suffix))
        if ttl != -2:
            found[suffix.lstrip(":") or "hash"] = ttl
    return found


def test_the_key_ttl_is_a_day_or_ten_times_the_longest_timeout() -> None:
    """key_ttl: max(1 day, 10 × the longest of reset_timeout, half-open duration, permit ttl)."""
    assert key_ttl(BreakerConfig(reset_timeout=60.0)) == KEY_TTL_MIN == 86_400.0
    assert key_ttl(BreakerConfig(reset_timeout=36_000.0)) == 720_000.0  # 2 × reset for half-open
    assert key_ttl(BreakerConfig(reset_timeout=10.0, permit_ttl=20_000.0)) == 200_000.0


def test_every_key_a_breaker_writes_expires_after_its_ttl(redis_url: str) -> None:
    """Hash, failure-rate window and half-open permits: each gets a TTL of at most a day."""
    name = unique("all")
    breaker = CircuitBreaker(name, redis_url=redis_url, failure_threshold=1,
                             reset_timeout=0.05, failure_rate_threshold=0.9, minimum_calls=50)
    breaker.call(lambda: None)  # a window bit
    fail(breaker)  # opens
    time.sleep(0.1)
    admission = breaker._store.admit()  # the half-open trial's permit, held
    assert admission.permit is not None
    found = ttls(redis_url, name)
    assert set(found) == {"hash", "permits"}  # the window was cleared by the trip
    assert all(DAY_MS - 5_000 < ttl <= DAY_MS for ttl in found.values()), found

    other = unique("window")
    rated = CircuitBreaker(other, redis_url=redis_url, failure_rate_threshold=0.9,
                           minimum_calls=50)
    rated.call(lambda: None)
    found = ttls(redis_url, other)
    assert set(found) == {"hash", "window"}
    assert all(DAY_MS - 5_000 < ttl <= DAY_MS for ttl in found.values()), found


def test_a_closed_breaker_with_nothing_to_remember_writes_no_key(redis_url: str) -> None:
    """Successes alone (no failure-rate window) leave nothing in Redis to expire."""
    name = unique("quiet")
    breaker = CircuitBreaker(name, redis_url=redis_url)
    for _ in range(20):
        breaker.call(lambda: None)
    assert ttls(redis_url, name) == {}


def test_a_mode_an_operator_set_never_expires_until_it_is_back_to_normal(redis_url: str) -> None:
    """forced_open persists (no TTL on any key); mode normal brings the expiry back."""
    name = unique("mode")
    breaker = CircuitBreaker(name, redis_url=redis_url, failure_rate_threshold=0.9,
                             minimum_calls=50)
    breaker.call(lambda: None)
    breaker.set_mode("metrics_only")
    breaker.call(lambda: None)
    assert ttls(redis_url, name) == {"hash": -1, "window": -1}
    breaker.set_mode("forced_open")
    assert ttls(redis_url, name) == {"hash": -1}
    breaker.set_mode("normal")
    assert 0 < ttls(redis_url, name)["hash"] <= DAY_MS


def test_a_key_written_without_ttl_gets_one_on_its_next_call(redis_url: str) -> None:
    """A hash from before expiries existed (no TTL) is given one by the next outcome."""
    name = unique("legacy")
    client = redis.Redis.from_url(redis_url)
    client.hset(hkey(name), mapping={"state": "closed", "mode": "normal", "gen": "0",
                                        "fails": "0"})
    assert client.pttl(hkey(name)) == -1
    CircuitBreaker(name, redis_url=redis_url).call(lambda: None)
    assert 0 < client.pttl(hkey(name)) <= DAY_MS


# -- one round trip for every state ------------------------------------------------------------


def test_the_states_of_300_breakers_are_read_in_one_round_trip(
        redis_url: str, counted: type[CountingConnection]) -> None:
    """states(): one pipelined write for 300 breakers, no script, the right state for each."""
    breakers = [CircuitBreaker(unique(f"many{i}"), redis_url=redis_url, failure_threshold=1,
                               reset_timeout=60.0) for i in range(300)]
    for breaker in breakers[::3]:
        fail(breaker)
    memory = CircuitBreaker(unique("memory"), storage="memory")
    states(breakers[:1])  # connects (the handshake is not a scrape's cost)
    client = redis.Redis.from_url(redis_url)
    calls_before = client.info("commandstats")
    counted.writes = 0
    found = states([*breakers, memory])
    assert counted.writes == 1
    calls_after = client.info("commandstats")
    assert calls_after["cmdstat_hmget"]["calls"] - calls_before["cmdstat_hmget"]["calls"] == 300
    assert calls_after.get("cmdstat_evalsha", {}).get("calls", 0) == \
        calls_before.get("cmdstat_evalsha", {}).get("calls", 0)
    assert found == {b.name: "open" if i % 3 == 0 else "closed" for i, b in enumerate(breakers)} \
        | {memory.name: "closed"}


def test_states_fall_back_to_what_this_process_saw_when_redis_is_down() -> None:
    """An unreachable Redis: each breaker's last local view, no exception."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    breaker = CircuitBreaker(unique("down"), redis_url=url, failure_threshold=1)
    fail(breaker)  # on the memory fallback: open
    assert states([breaker]) == {breaker.name: "open"}


def test_a_garbled_breaker_reads_as_no_state(redis_url: str) -> None:
    """states() marks a breaker whose hash is invalid with None."""
    name = unique("garbled")
    breaker = CircuitBreaker(name, redis_url=redis_url)
    redis.Redis.from_url(redis_url).hset(hkey(name), "state", "bogus")
    assert states([breaker]) == {name: None}


# -- per-host breakers ---------------------------------------------------------------------------


def test_host_breakers_keep_the_most_recently_used_and_the_state_stays_in_redis(
        redis_url: str) -> None:
    """Limit 3: the least recently used is unregistered; built again, it reads Redis' state."""
    hosts = HostBreakers(limit=3)
    names = [unique(f"host{i}") for i in range(5)]

    def build(name: str) -> Any:
        return lambda: CircuitBreaker(name, redis_url=redis_url, failure_threshold=1,
                                      reset_timeout=60.0)

    first = hosts.get(names[0], build(names[0]))
    fail(first)  # open, in Redis
    for name in names[1:3]:
        hosts.get(name, build(name))
    assert hosts.get(names[0], build(names[0])) is first  # used again: now the newest
    for name in names[3:]:
        hosts.get(name, build(name))
    assert len(hosts) == 3
    assert [get_breaker(n) is not None for n in names] == [True, False, False, True, True]
    hosts.get(names[1], build(names[1]))  # evicts names[0], the least recently used now
    assert get_breaker(names[0]) is None
    again = hosts.get(names[0], build(names[0]))
    assert again is not first and again.state == "open"


def test_host_breakers_keep_a_memory_breaker_that_has_something_to_remember() -> None:
    """Storage memory: an open breaker is never dropped (its state is nowhere else)."""
    hosts = HostBreakers(limit=1)
    names = [unique(f"mem{i}") for i in range(3)]

    def build(name: str) -> Any:
        return lambda: CircuitBreaker(name, storage="memory", failure_threshold=1)

    tripped = hosts.get(names[0], build(names[0]))
    fail(tripped)
    hosts.get(names[1], build(names[1]))
    assert get_breaker(names[0]) is tripped  # kept, over the limit
    hosts.get(names[2], build(names[2]))
    assert get_breaker(names[1]) is None  # closed and clean: dropped
    assert len(hosts) == 2


def test_a_breaker_the_application_registered_is_used_as_it_is(redis_url: str) -> None:
    """HostBreakers returns a breaker registered under the name and never drops it."""
    hosts = HostBreakers(limit=1)
    mine = CircuitBreaker(unique("app"), redis_url=redis_url)
    assert hosts.get(mine.name, lambda: pytest.fail("built")) is mine
    for label in ("x", "y"):
        name = unique(label)
        hosts.get(name, lambda name=name: CircuitBreaker(name, redis_url=redis_url))
    assert get_breaker(mine.name) is mine
