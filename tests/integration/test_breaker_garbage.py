"""Garbage in a breaker's Redis hash: calls run on the fallback, it is told once, reset repairs."""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
import redis
import structlog
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry_guard import TelemetryGuard
from telemetry_guard.breaker import (
    CircuitBreaker,
    CircuitOpenError,
    InvalidBreakerState,
)
from telemetry_guard.breaker.redis_hash import CLOCK_SLACK_MS, FIELDS, stored_problems
from telemetry_guard.breaker.redis_store import RedisBreakerStore
from telemetry_guard.breaker.state import FAILURE, SUCCESS, BreakerConfig
from tests.breakers import Heard

PREFIX = "telemetry_guard:breaker:"


def hkey(name: str, suffix: str = "") -> str:
    """A breaker's key as Redis holds it: hash-tagged with the breaker's name."""
    return f"{PREFIX}{{{name}}}{suffix}"

#: Field values no breaker writes, each with the fields the script then names.
GARBAGE: list[tuple[dict[str, str], tuple[str, ...]]] = [
    ({"state": "bogus"}, ("state",)),
    ({"mode": "x"}, ("mode",)),
    ({"state": "open", "opened_at": "1e300"}, ("opened_at",)),
    ({"state": "open", "opened_at": "nan"}, ("opened_at",)),
    ({"state": "open", "opened_at": "inf"}, ("opened_at",)),
    ({"state": "half_open", "ho_since": "-5"}, ("ho_since",)),
    ({"gen": "inf"}, ("gen",)),
    ({"gen": "1" * 15}, ("gen",)),
    ({"fails": "abc"}, ("fails",)),
    ({"fails": "2.5"}, ("fails",)),
    ({"fails": " 3"}, ("fails",)),
    ({"ho_ok": ""}, ("ho_ok",)),
    ({"w_count": "3", "w_pos": "9"}, ("w_pos",)),
    ({"w_count": "3", "w_pos": "3", "w_fail": "4"}, ("w_fail",)),
    ({"w_count": str(2**40)}, ("w_count",)),
    ({"permit_seq": "x"}, ("permit_seq",)),
    ({"state": "\x1b[2J", "mode": "forced_open\x00"}, ("state", "mode")),
]


def garble(url: str, name: str, values: dict[str, str]) -> redis.Redis:
    """Write ``values`` into the breaker's hash as an unlucky operator or a bad script would."""
    client = redis.Redis.from_url(url)
    client.hset(hkey(name), mapping=values)  # type: ignore[arg-type]
    return client


def unique(label: str) -> str:
    return f"garbage-{label}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize(("values", "fields"), GARBAGE, ids=[str(v) for v, _ in GARBAGE])
def test_calls_through_a_garbled_breaker_run_and_the_garbage_is_told_once(
        redis_url: str, heard: Heard, values: dict[str, str], fields: tuple[str, ...]) -> None:
    """Every call runs on the fallback; one log line names the fields; errors go to the store."""
    name = unique("calls")
    breaker = CircuitBreaker(name, redis_url=redis_url, failure_threshold=50)
    garble(redis_url, name, values)
    ran: list[int] = []
    with structlog.testing.capture_logs() as logs:
        for i in range(20):
            assert breaker.call(ran.append, i) is None
        assert breaker.state == "closed"  # the fallback's view
    assert ran == list(range(20))
    told = [e for e in logs if e["event"] == "breaker.store_invalid"]
    assert len(told) == 1 and told[0]["fields"] == list(fields)
    assert told[0]["repair"] == f"telemetry-guard breakers reset {name}"
    assert heard.errors and {sink for sink, _ in heard.errors} == {"breaker_store"}
    assert isinstance(heard.errors[0][1], InvalidBreakerState)
    assert heard.errors[0][1].fields == fields
    assert heard.changes == []


@pytest.mark.parametrize(("values", "fields"), GARBAGE, ids=[str(v) for v, _ in GARBAGE])
def test_reset_repairs_a_garbled_breaker_and_redis_is_shared_again(
        redis_url: str, heard: Heard, values: dict[str, str], fields: tuple[str, ...]) -> None:
    """After reset() the hash is valid, closed and counted in Redis; a trip is fleet-wide again."""
    name = unique("reset")
    breaker = CircuitBreaker(name, redis_url=redis_url, failure_threshold=2, reset_timeout=30.0)
    client = garble(redis_url, name, {**values, "junk": "\x07"})
    client.set(hkey(name, ":permits"), "not a zset")
    breaker.call(lambda: None)  # on the fallback
    breaker.reset()
    stored = client.hgetall(hkey(name))
    assert stored[b"state"] == b"closed" and b"junk" not in stored
    assert not stored_problems({f: stored.get(f.encode()) for f in FIELDS}, now_ms(client))
    assert client.exists(hkey(name, ":permits")) == 0
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
    assert client.hget(hkey(name), "state") == b"open"
    other = CircuitBreaker(name, redis_url=redis_url, failure_threshold=2, reset_timeout=30.0)
    with pytest.raises(CircuitOpenError):
        other.call(lambda: None)


def test_side_keys_of_the_wrong_type_fail_open_until_reset_deletes_them(
        redis_url: str, heard: Heard) -> None:
    """A list where the window bitmap should be: calls run on the fallback; reset clears it."""
    name = unique("sidekeys")
    breaker = CircuitBreaker(name, redis_url=redis_url, failure_rate_threshold=0.5,
                             minimum_calls=50)
    client = redis.Redis.from_url(redis_url)
    client.rpush(hkey(name, ":window"), "x")
    client.hset(hkey(name), mapping={"state": "closed", "w_count": "1", "w_pos": "1"})
    assert breaker.call(lambda: "ran") == "ran"
    assert [sink for sink, _ in heard.errors] == ["breaker_store"]
    breaker.reset()
    assert client.exists(hkey(name, ":window")) == 0
    assert breaker.call(lambda: "ran") == "ran"
    assert client.hget(hkey(name), "w_count") == b"1" and len(heard.errors) == 1


@pytest.mark.parametrize("command", ["force_open", "set_mode"])
def test_the_other_commands_repair_too(redis_url: str, command: str) -> None:
    """force_open and set_mode rewrite a garbled hash before they act."""
    name = unique(command)
    breaker = CircuitBreaker(name, redis_url=redis_url, reset_timeout=30.0)
    client = garble(redis_url, name, {"state": "bogus", "gen": "nan", "opened_at": "1e300"})
    if command == "force_open":
        breaker.force_open()
        expected = (b"open", b"normal", b"2")  # the repair is a generation, the trip another
    else:
        breaker.set_mode("metrics_only")
        expected = (b"closed", b"metrics_only", b"1")
    assert tuple(client.hmget(hkey(name), "state", "mode", "gen")) == expected


def test_with_fail_closed_a_garbled_breaker_still_runs_the_call(
        redis_url: str, heard: Heard) -> None:
    """on_redis_error="fail_closed" is for outages: garbage in the hash still runs the call."""
    name = unique("closed")
    breaker = CircuitBreaker(name, redis_url=redis_url, on_redis_error="fail_closed")
    garble(redis_url, name, {"state": "bogus"})
    assert breaker.call(lambda: "ran") == "ran"
    assert [sink for sink, _ in heard.errors] == ["breaker_store"]
    breaker.reset()
    assert breaker.call(lambda: "ran again") == "ran again"


def test_missing_fields_are_read_as_their_defaults(redis_url: str) -> None:
    """A hash holding only ``state=open`` (no opened_at): the open period is long over."""
    name = unique("missing")
    breaker = CircuitBreaker(name, redis_url=redis_url, reset_timeout=30.0)
    garble(redis_url, name, {"state": "open"})
    assert breaker.call(lambda: "ran") == "ran"  # the half-open trial
    assert breaker.state == "closed"


def test_the_garbage_counts_as_a_telemetry_error_of_the_guard(
        celery_app: Celery, redis_url: str) -> None:
    """telemetry_guard_telemetry_errors_total{sink="breaker_store"} grows; the call runs."""
    guard = TelemetryGuard(celery_app)
    name = unique("counted")
    breaker = CircuitBreaker(name, failure_threshold=3)  # the guard's Redis
    garble(redis_url, name, {"state": "open", "opened_at": "nan"})

    def errors() -> float:
        # the counter alone: a whole-registry scrape would read every breaker's state too
        [family] = guard.metrics.telemetry_errors.collect()
        return sum(s.value for s in family.samples
                   if s.name.endswith("_total") and s.labels == {"sink": "breaker_store"})

    before = errors()
    assert breaker.call(lambda: "ran") == "ran"
    assert errors() == before + 1


def now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def script_verdict(url: str, name: str) -> tuple[str, ...]:
    """The fields the script calls invalid (none when it answers normally)."""
    store = RedisBreakerStore(name, BreakerConfig(), redis_url=url)
    try:
        store._run(b"snapshot")
    except InvalidBreakerState as exc:
        return exc.fields
    return ()


VALUE = st.one_of(
    st.sampled_from(["", "0", "7", "-1", "1.0", "1e3", "nan", "-nan", "inf", "-inf", "0x10",
                     " 5", "5 ", "closed", "open", "half_open", "normal", "disabled",
                     "forced_open", "metrics_only", "OPEN", "9" * 14, "9" * 15]),
    st.integers(0, 10**16).map(str),
    st.text(max_size=8),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.dictionaries(st.sampled_from(FIELDS), VALUE, max_size=4))
def test_the_script_and_the_clis_check_agree_on_what_is_invalid(
        redis_url: str, values: dict[str, str]) -> None:
    """For any stored values, the Lua script and stored_problems name the same fields."""
    name = unique("agree")
    client = redis.Redis.from_url(redis_url)
    if values:
        client.hset(hkey(name), mapping=values)  # type: ignore[arg-type]
    now = now_ms(client)
    moments = [int(values[f]) for f in ("opened_at", "ho_since")
               if values.get(f, "").isascii() and values.get(f, "").isdigit()]
    if any(abs(m - now - CLOCK_SLACK_MS) < 5_000 for m in moments):
        return  # too close to the clock's edge to compare two readings of it
    stored = {f: (v.encode() if (v := values.get(f)) is not None else None) for f in FIELDS}
    assert script_verdict(redis_url, name) == stored_problems(stored, now)


# -- a window written under another window_size ------------------------------------------------


def store_with_window(url: str, name: str, size: int, rate: float) -> RedisBreakerStore:
    """A store of breaker ``name`` with a full window of ``size`` needed to trip at ``rate``."""
    config = BreakerConfig(failure_threshold=1000, failure_rate_threshold=rate,
                           window_size=size, minimum_calls=size)
    return RedisBreakerStore(name, config, redis_url=url)


def feed(store: RedisBreakerStore, outcomes: str) -> None:
    """Record outcomes: ``F`` a failure, ``S`` a success."""
    for mark in outcomes:
        store.record(store.admit(), FAILURE if mark == "F" else SUCCESS)


def window_fields(url: str, name: str) -> tuple[int, int, int]:
    raw = redis.Redis.from_url(url).hmget(hkey(name), "w_pos", "w_count", "w_fail")
    return int(raw[0]), int(raw[1]), int(raw[2])


def test_a_smaller_window_size_keeps_only_the_newest_outcomes(redis_url: str) -> None:
    """10 outcomes (6 old failures, 4 new successes), window 10 → 4: the rate is the newest 4's."""
    name = unique("shrink")
    feed(store_with_window(redis_url, name, 10, 0.7), "FFFFFFSSSS")
    assert window_fields(redis_url, name) == (0, 10, 6)
    smaller = store_with_window(redis_url, name, 4, 0.5)
    feed(smaller, "S")  # with the old window kept whole, 5 of 10 failed: it would open
    assert smaller.snapshot().state == "closed"
    assert smaller.snapshot().failure_rate == 0.0
    assert window_fields(redis_url, name) == (1, 4, 0)  # the newest 4, then one more

    other = unique("shrink-fail")
    feed(store_with_window(redis_url, other, 10, 0.7), "SSSSSSFFF")
    feed(store_with_window(redis_url, other, 4, 0.5), "F")  # S F F F, then F: four failures
    assert store_with_window(redis_url, other, 4, 0.5).snapshot().state == "open"


def test_a_larger_window_size_keeps_the_outcomes_in_order(redis_url: str) -> None:
    """A full window of 4 that wrapped around, grown to 10: oldest first, the rate exact."""
    name = unique("grow")
    feed(store_with_window(redis_url, name, 4, 0.9), "FFSSSF")  # S S S F, oldest at w_pos 2
    assert window_fields(redis_url, name) == (2, 4, 1)
    larger = store_with_window(redis_url, name, 10, 0.9)
    feed(larger, "FF")
    assert window_fields(redis_url, name) == (6, 6, 3)
    bits = redis.Redis.from_url(redis_url).get(hkey(name, ":window")) or b""
    outcomes = "".join("F" if bits[i // 8] >> (7 - i % 8) & 1 else "S" for i in range(6))
    assert outcomes == "SSSFFF"
    assert math.isclose(larger.snapshot().failure_rate or 0.0, 0.5)


def test_the_memory_fallback_still_trips_while_the_hash_is_garbled(
        redis_url: str, heard: Heard) -> None:
    """A failing dependency behind a garbled breaker is still cut off, by this process."""
    name = unique("trips")
    breaker = CircuitBreaker(name, redis_url=redis_url, failure_threshold=2, reset_timeout=30.0)
    garble(redis_url, name, {"mode": "x"})
    outcomes: list[Any] = []
    for _ in range(3):
        try:
            breaker.call(lambda: 1 / 0)
        except ZeroDivisionError:
            outcomes.append("failed")
        except CircuitOpenError:
            outcomes.append("rejected")
    assert outcomes == ["failed", "failed", "rejected"]
