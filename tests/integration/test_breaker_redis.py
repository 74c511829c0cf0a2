"""CircuitBreaker on a private redis-server: shared state, races between processes, outages."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import redis
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry_guard.breaker import (
    CircuitBreaker,
    CircuitOpenError,
    get_default_redis_url,
    redis_store,
    set_call_listener,
    set_default_redis_url,
)
from telemetry_guard.breaker.memory import MemoryBreakerStore
from telemetry_guard.breaker.redis_store import RedisBreakerStore, StoreUnconfigured
from telemetry_guard.breaker.state import FAILURE, IGNORED, MODES, SUCCESS, BreakerConfig
from telemetry_guard.stores.scripts import lua
from tests.breaker_race import (
    RemoteDown,
    attempt,
    boom,
    breaker_on,
    race_once,
    run_processes,
)
from tests.breakers import Heard
from tests.forking import FORK, in_child
from tests.servers import free_port, start_redis, wait_for

SCRIPT = lua("breaker")


def test_eight_processes_trip_once_and_share_exactly_the_half_open_permits(
        redis_url: str) -> None:
    """Twenty times: one closed→open per trip, exactly half_open_max_calls trials fleet-wide."""
    started = time.monotonic()
    for repetition in range(20):
        race_once(redis_url, f"race-{repetition}")
    assert time.monotonic() - started < 45


def test_a_failure_rate_spread_over_eight_processes_trips_the_breaker(redis_url: str) -> None:
    """90 % failures across processes trip the rate rule; the consecutive rule cannot."""
    name = "rate"
    breaker = breaker_on(redis_url, name, failure_threshold=1000, reset_timeout=30.0,
                         failure_rate_threshold=0.5, window_size=40, minimum_calls=20)

    def mostly_failing(barrier: Any) -> dict[str, Any]:
        barrier.wait()
        executed = 0
        for index in range(200):
            outcome = attempt(breaker, boom if index % 10 else (lambda: None))
            if outcome == "rejected":
                break
            executed += 1
        return {"executed": executed}

    reports = run_processes(mostly_failing)
    changes = [change for r in reports for change in r["changes"]]
    assert changes == [("closed", "open", "failure_rate")]
    assert sum(r["executed"] for r in reports) >= 20, "not before minimum_calls"
    assert breaker.state == "open"


# -- two processes ---------------------------------------------------------------------------


def test_a_breaker_opened_in_one_process_rejects_in_another_within_one_call(
        redis_url: str) -> None:
    """The parent's cached closed view admits at most one more call after a child trips it."""
    breaker = breaker_on(redis_url, "shared", failure_threshold=2, reset_timeout=30.0)
    assert attempt(breaker, lambda: None) == "ran"

    def trip() -> list[str]:
        return [attempt(breaker, boom) for _ in range(3)]

    assert in_child(trip) == ["failed", "failed", "rejected"]
    assert [attempt(breaker, lambda: None) for _ in range(3)] == ["ran", "rejected", "rejected"]
    other = breaker_on(redis_url, "shared", failure_threshold=2, reset_timeout=30.0)
    assert other.snapshot().state == breaker.snapshot().state == "open"


def test_a_reset_in_another_process_is_seen_within_about_a_second(redis_url: str) -> None:
    """A locally rejecting breaker re-reads Redis at least every REFRESH_INTERVAL."""
    breaker = breaker_on(redis_url, "refresh", failure_threshold=1, reset_timeout=30.0)
    breaker.force_open()
    assert attempt(breaker, lambda: None) == "rejected"
    in_child(breaker.reset)
    started = time.monotonic()
    wait_for(lambda: attempt(breaker, lambda: None) == "ran", timeout=5, interval=0.02)
    assert time.monotonic() - started <= redis_store.REFRESH_INTERVAL + 0.3


def test_modes_are_shared_by_every_process(redis_url: str, heard: Heard) -> None:
    """forced_open set in a child rejects here within one call; disabled passes everything."""
    breaker = breaker_on(redis_url, "modes", failure_threshold=1, reset_timeout=30.0)
    assert attempt(breaker, lambda: None) == "ran"
    in_child(lambda: breaker.set_mode("forced_open"))
    assert [attempt(breaker, lambda: None) for _ in range(2)] == ["ran", "rejected"]
    assert breaker.mode == "forced_open" and breaker.state == "open"
    in_child(lambda: breaker.set_mode("disabled"))
    breaker.snapshot()  # re-read now rather than after REFRESH_INTERVAL
    assert [attempt(breaker, boom) for _ in range(3)] == ["failed"] * 3
    assert breaker.state == "closed"
    in_child(lambda: breaker.set_mode("metrics_only"))
    breaker.snapshot()
    assert [attempt(breaker, boom) for _ in range(3)] == ["failed"] * 3
    assert breaker.state == "open" and breaker.mode == "metrics_only"
    assert [(c.from_state, c.to_state) for c in heard.changes] == [("closed", "open")]


def test_a_late_outcome_from_an_older_generation_changes_nothing(redis_url: str) -> None:
    """A slow call admitted before another process's open and reset cannot count afterwards."""
    breaker = breaker_on(redis_url, "late", failure_threshold=2, reset_timeout=30.0)
    started, finish = threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        finish.wait(10)
        raise RemoteDown("late")

    outcomes: list[str] = []
    thread = threading.Thread(target=lambda: outcomes.append(attempt(breaker, slow)))
    thread.start()
    assert started.wait(10)
    in_child(lambda: (breaker.force_open(), breaker.reset()))
    finish.set()
    thread.join(10)
    snap = breaker.snapshot()
    assert outcomes == ["failed"]
    assert (snap.state, snap.generation, snap.consecutive_failures) == ("closed", 2, 0)


def test_killing_the_holder_of_a_half_open_permit_blocks_only_until_its_lease_expires(
        redis_url: str) -> None:
    """A SIGKILLed trial's permit expires after permit_ttl and the next trial closes it."""
    ttl = 0.5
    breaker = breaker_on(redis_url, "killed", failure_threshold=1, reset_timeout=0.1,
                         half_open_max_calls=1, permit_ttl=ttl, half_open_max_duration=30.0)
    breaker.force_open()
    time.sleep(0.12)
    holding = FORK.Event()

    def hold() -> None:
        breaker.call(lambda: (holding.set(), time.sleep(60)))

    child = FORK.Process(target=hold)
    child.start()
    try:
        assert holding.wait(10)
        acquired = time.monotonic()
        snap = breaker.snapshot()
        assert (snap.state, snap.half_open_permits_in_use) == ("half_open", 1)
    finally:
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(10)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: None)
    assert 0 < info.value.retry_after <= ttl
    wait_for(lambda: attempt(breaker, lambda: None) == "ran", timeout=5, interval=0.01)
    waited = time.monotonic() - acquired
    assert ttl - 0.1 <= waited <= ttl + 0.4
    assert breaker.state == "closed"


# -- the script and the pure state machine ---------------------------------------------------

STEPS = st.lists(st.one_of(
    st.tuples(st.just("call"), st.sampled_from([SUCCESS, FAILURE, FAILURE, IGNORED])),
    st.tuples(st.just("hold"), st.none()),
    st.tuples(st.just("finish"), st.tuples(st.integers(0, 5), st.sampled_from(
        [SUCCESS, FAILURE]))),
    st.tuples(st.just("command"), st.sampled_from(["reset", "force_open", *MODES])),
), max_size=40)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS, threshold=st.integers(1, 4), rate=st.sampled_from([None, 0.5, 0.7]))
def test_the_lua_script_and_the_pure_state_machine_agree(
        redis_url: str, steps: list[tuple[str, Any]], threshold: int,
        rate: float | None) -> None:
    """The same calls, late outcomes and commands give the same states, counts and changes."""
    config = BreakerConfig(failure_threshold=threshold, reset_timeout=60.0,
                           failure_rate_threshold=rate, window_size=5, minimum_calls=3)
    name = f"agree-{uuid.uuid4().hex}"
    shared, local = RedisBreakerStore(name, config, redis_url=redis_url), \
        MemoryBreakerStore(name, config)
    held: list[tuple[Any, Any]] = []
    for kind, value in steps:
        if kind in ("call", "hold"):
            pair = (shared.admit(), local.admit())
            assert pair[0].admitted == pair[1].admitted
            assert pair[0].generation == pair[1].generation
            if not pair[0].admitted:
                continue
            if kind == "hold":
                held.append(pair)
                continue
            changes = (shared.record(pair[0], value), local.record(pair[1], value))
        elif kind == "finish":
            if not held:
                continue
            index, outcome = value
            pair = held.pop(index % len(held))
            changes = (shared.record(pair[0], outcome), local.record(pair[1], outcome))
        elif value in MODES:
            changes = (shared.set_mode(value), local.set_mode(value))
        else:
            changes = (getattr(shared, value)(), getattr(local, value)())
        assert [(c.from_state, c.to_state, c.reason) for c in changes[0]] == [
            (c.from_state, c.to_state, c.reason) for c in changes[1]]
        mine, theirs = shared.snapshot(), local.snapshot()
        assert (mine.state, mine.mode, mine.generation, mine.consecutive_failures,
                mine.failure_rate) == (theirs.state, theirs.mode, theirs.generation,
                                       theirs.consecutive_failures, theirs.failure_rate)


# -- round trips -------------------------------------------------------------------------------


def command_calls(client: redis.Redis) -> Counter[str]:
    stats = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(value["calls"])
                    for name, value in stats.items()})


@pytest.mark.parametrize("rate", [None, 0.5])
def test_the_closed_path_costs_at_most_one_round_trip_per_call(
        redis_url: str, rate: float | None) -> None:
    """1000 closed calls send at most 1000 commands to Redis (INFO commandstats)."""
    breaker = breaker_on(redis_url, f"roundtrips-{rate}", failure_rate_threshold=rate)
    for _ in range(10):
        breaker.call(lambda: None)
    client = redis.Redis.from_url(redis_url)
    before = command_calls(client)
    for _ in range(1000):
        breaker.call(lambda: None)
    spent = command_calls(client) - before
    spent.pop("info", None)
    scripts = spent.pop("evalsha", 0) + spent.pop("eval", 0)
    assert scripts <= 1000
    # Commands the script runs are counted under their own names: each closed-path script
    # runs TIME and HMGET once; anything else must have come from the script too.
    inside_script = {name.lower() for name in re.findall(r"redis\.p?call\('(\w+)'", SCRIPT)}
    assert spent["time"] == spent["hmget"] == scripts
    assert set(spent) <= inside_script, f"client-side commands: {set(spent) - inside_script}"


# -- Redis unavailable -------------------------------------------------------------------------


def unreachable_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def test_unreachable_redis_falls_back_to_a_memory_breaker_and_says_so_once(
        heard: Heard) -> None:
    """fail_open: calls keep memory-breaker semantics, one log line, errors to breaker_store."""
    breaker = breaker_on(unreachable_url(), "down-open", failure_threshold=2, reset_timeout=30.0)
    with structlog.testing.capture_logs() as logs:
        outcomes = [attempt(breaker, fn) for fn in (lambda: None, boom, boom, lambda: None)]
    assert outcomes == ["ran", "failed", "failed", "rejected"]
    assert [e["event"] for e in logs].count("breaker.store_unavailable") == 1
    assert heard.errors and all(sink == "breaker_store" for sink, _ in heard.errors)
    assert isinstance(heard.errors[0][1], redis.ConnectionError)
    assert breaker.state == "open"
    assert [(c.from_state, c.to_state) for c in heard.changes] == [("closed", "open")]


def test_unreachable_redis_with_fail_closed_rejects_every_call(heard: Heard) -> None:
    """fail_closed: no call runs while Redis is down, and the outage is reported."""
    breaker = breaker_on(unreachable_url(), "down-closed", on_redis_error="fail_closed")
    ran: list[int] = []
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(ran.append, 1)
    assert ran == [] and info.value.retry_after > 0
    assert [sink for sink, _ in heard.errors] == ["breaker_store"]


def test_the_breaker_returns_to_redis_when_it_is_back(
        heard: Heard, monkeypatch: pytest.MonkeyPatch) -> None:
    """After an outage the breaker retries Redis and uses the shared state again."""
    monkeypatch.setattr(redis_store, "STORE_RETRY_INTERVAL", 0.2)
    server = start_redis()
    try:
        breaker = breaker_on(server.url, "outage", failure_threshold=3, reset_timeout=30.0)
        assert attempt(breaker, lambda: None) == "ran"
        server.stop()
        with structlog.testing.capture_logs() as logs:
            assert attempt(breaker, lambda: None) == "ran"
            assert attempt(breaker, boom) == "failed"
            server.restart()
            time.sleep(0.25)
            assert attempt(breaker, boom) == "failed"
        assert [e["event"] for e in logs] == ["breaker.store_unavailable",
                                              "breaker.store_recovered"]
        assert server.client().hget("telemetry_guard:breaker:{outage}", "fails") == b"1"
    finally:
        server.stop()


def test_without_a_redis_url_the_breaker_waits_for_the_guards_default(
        redis_url: str, heard: Heard) -> None:
    """redis_url=None: memory fallback and a report until set_default_redis_url, then Redis."""
    set_default_redis_url(None)  # whatever a guard of an earlier test left behind
    assert get_default_redis_url() is None
    breaker = CircuitBreaker("unconfigured", failure_threshold=2)
    try:
        with structlog.testing.capture_logs() as logs:
            assert attempt(breaker, lambda: None) == "ran"
        assert [e["event"] for e in logs] == ["breaker.store_unavailable"]
        assert isinstance(heard.errors[0][1], StoreUnconfigured)
        set_default_redis_url(redis_url)
        assert attempt(breaker, boom) == "failed"
        raw = redis.Redis.from_url(redis_url)
        assert raw.hget("telemetry_guard:breaker:{unconfigured}", "fails") == b"1"
    finally:
        set_default_redis_url(None)


def test_a_forked_child_rebuilds_its_client_and_cache(redis_url: str) -> None:
    """A breaker built before fork works in the child on a connection of its own."""
    breaker = breaker_on(redis_url, "forked", failure_threshold=1, reset_timeout=30.0)
    assert attempt(breaker, lambda: None) == "ran"
    parent_client = breaker._store._client  # type: ignore[attr-defined]

    def child() -> tuple[str, bool]:
        outcome = attempt(breaker, boom)
        return outcome, breaker._store._client is not parent_client  # type: ignore[attr-defined]

    assert in_child(child) == ("failed", True)
    assert [attempt(breaker, lambda: None) for _ in range(2)] == ["ran", "rejected"]


def test_call_listener_counts_each_call_once_on_redis(redis_url: str) -> None:
    """success, failure and rejected each reach the call listener once per call."""
    outcomes: list[str] = []
    previous = set_call_listener(lambda name, outcome: outcomes.append(outcome))
    try:
        breaker = breaker_on(redis_url, "calls", failure_threshold=1, reset_timeout=30.0)
        for fn in (lambda: None, boom, lambda: None):
            attempt(breaker, fn)
    finally:
        set_call_listener(previous)
    assert outcomes == ["success", "failure", "rejected"]
