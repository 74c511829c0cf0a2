"""RetryBudget on a private redis-server: the fleet-wide ratio, outages, fork safety, the script."""

from __future__ import annotations

import math
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry_guard.stores.budget import (
    EXPIRE_TTLS,
    SCRIPT_NAME,
    BudgetConfig,
    BudgetState,
    RetryBudget,
    advance,
)
from telemetry_guard.stores.scripts import lua
from tests.forking import FORK, in_child
from tests.servers import free_port, start_redis, wait_for

SCRIPT = lua(SCRIPT_NAME)

WORKERS = 4
#: Seconds between two first attempts in one worker, and how long the storm lasts.
PERIOD = 0.01
STORM_SECONDS = 3.0

Errors = list[tuple[str, BaseException | None]]


def key(scope: str, prefix: str = "telemetry_guard:") -> str:
    return f"{prefix}retry_budget:{scope}"


#: A time constant so long that tokens written by two flushes a few ms apart add up exactly.
NO_DECAY = 3600.0


def bucket(url: str, scope: str) -> dict[str, float]:
    """The scope's hash as numbers ({} when the key does not exist)."""
    raw = redis.Redis.from_url(url).hgetall(key(scope))
    return {name.decode(): float(value) for name, value in raw.items()}


@pytest.fixture
def make_budget(redis_url: str) -> Iterator[Callable[..., tuple[RetryBudget, Errors]]]:
    """Builds budgets on the private server that record what they report; closes them after."""
    made: list[RetryBudget] = []

    def make(config: BudgetConfig | None = None, url: str = redis_url,
             **options: Any) -> tuple[RetryBudget, Errors]:
        errors: Errors = []
        budget = RetryBudget(url, config or BudgetConfig(), **options,
                             report_error=lambda sink, exc: errors.append((sink, exc)))
        made.append(budget)
        return budget, errors

    yield make
    for budget in made:
        budget.close()


# -- the fleet-wide ratio ------------------------------------------------------------------

def storm_worker(url: str, scope: str, start_at: float, results: Any) -> None:
    """One worker: a first attempt every PERIOD that fails and asks to retry; refused = give-up."""
    try:
        errors: Errors = []
        budget = RetryBudget(url, BudgetConfig(ratio=0.2, min_retries_per_second=0.0),
                             report_error=lambda sink, exc: errors.append((sink, exc)))
        first_attempts = granted = give_ups = 0
        next_at = start_at
        while next_at < start_at + STORM_SECONDS:
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += PERIOD
            budget.deposit(scope)  # the task starts
            first_attempts += 1
            if budget.withdraw(scope):  # ... fails, and asks to retry
                granted += 1
            else:
                give_ups += 1
        budget.close()
        results.put(("ok", first_attempts, granted, give_ups, [repr(e) for e in errors]))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def test_four_workers_retry_at_most_the_ratio_of_their_first_attempts(redis_url: str) -> None:
    """4 processes, a failing first attempt each every 10 ms for 3 s, min_retries_per_second=0:
    granted retries / first attempts is 0.2 ± 10 %, and every other retry became a give-up."""
    results = FORK.Queue()
    start_at = time.monotonic() + 0.3
    workers = [FORK.Process(target=storm_worker, args=(redis_url, "tasks.flaky", start_at, results))
               for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    replies = [results.get(timeout=STORM_SECONDS + 20) for _ in workers]
    for worker in workers:
        worker.join(10)
    failed = [reply[1] for reply in replies if reply[0] != "ok"]
    assert not failed, failed[0]
    first_attempts = sum(reply[1] for reply in replies)
    granted = sum(reply[2] for reply in replies)
    give_ups = sum(reply[3] for reply in replies)
    ratio = granted / first_attempts
    print(f"\nretry budget, {WORKERS} workers x {STORM_SECONDS:g} s: first attempts "
          f"{first_attempts}, retries granted {granted}, refused (give-ups) {give_ups}, "
          f"granted/first attempts {ratio:.4f}")
    assert all(reply[4] == [] for reply in replies), [reply[4] for reply in replies]
    assert first_attempts >= WORKERS * STORM_SECONDS / PERIOD * 0.9
    assert granted + give_ups == first_attempts
    assert 0.18 <= ratio <= 0.22, (first_attempts, granted, give_ups)


# -- deposits and withdrawals on one server ----------------------------------------------

def test_deposits_reach_redis_only_when_flushed(
        make_budget: Callable[..., tuple[RetryBudget, Errors]], redis_url: str) -> None:
    """Deposits stay in the process until a flush writes every scope's at once."""
    budget, errors = make_budget(flush_interval=60.0)
    for _ in range(10):
        budget.deposit("a")
    for _ in range(5):
        budget.deposit("b")
    assert bucket(redis_url, "a") == {}
    budget.flush()
    assert bucket(redis_url, "a")["tokens"] == pytest.approx(2.0, rel=1e-3)
    assert bucket(redis_url, "b")["tokens"] == pytest.approx(1.0, rel=1e-3)
    assert errors == []


def test_the_background_thread_writes_deposits_every_flush_interval(
        make_budget: Callable[..., tuple[RetryBudget, Errors]], redis_url: str) -> None:
    """Without an explicit flush, deposits land in Redis within about flush_interval."""
    budget, _ = make_budget(flush_interval=0.05)
    budget.deposit("a")
    wait_for(lambda: bucket(redis_url, "a"), timeout=2.0)


def test_withdraw_counts_this_processs_pending_deposits_in_the_same_call(
        make_budget: Callable[..., tuple[RetryBudget, Errors]]) -> None:
    """A deposit not yet flushed pays for the retry asked right after it."""
    budget, _ = make_budget(BudgetConfig(ratio=1.0, min_retries_per_second=0.0),
                            flush_interval=60.0)
    assert budget.withdraw("a") is False
    budget.deposit("a")
    assert budget.withdraw("a") is True
    assert budget.withdraw("a") is False


def test_budgets_on_the_same_redis_share_one_bucket_per_scope(
        make_budget: Callable[..., tuple[RetryBudget, Errors]]) -> None:
    """Deposits of one budget pay for another's retries of the same scope, not other scopes'
    (11 first attempts at 20 % are 2.2 tokens: two retries, decay included)."""
    depositor, _ = make_budget(BudgetConfig(min_retries_per_second=0.0))
    retrier, _ = make_budget(BudgetConfig(min_retries_per_second=0.0))
    for _ in range(11):
        depositor.deposit("tasks.a")
    depositor.flush()
    assert retrier.withdraw("tasks.b") is False
    assert [retrier.withdraw("tasks.a") for _ in range(3)] == [True, True, False]


def test_the_reserve_allows_a_few_retries_a_second_without_deposits(
        make_budget: Callable[..., tuple[RetryBudget, Errors]]) -> None:
    """min_retries_per_second=3: three retries at once, then refusals, then one more after
    a third of a second has refilled it."""
    budget, _ = make_budget(BudgetConfig(min_retries_per_second=3.0))
    assert [budget.withdraw("quiet") for _ in range(4)] == [True, True, True, False]
    time.sleep(0.4)
    assert [budget.withdraw("quiet") for _ in range(2)] == [True, False]


def test_the_key_is_a_hash_under_the_prefix_that_expires(
        make_budget: Callable[..., tuple[RetryBudget, Errors]], redis_url: str) -> None:
    """<prefix>retry_budget:<scope> is a hash with an expiry of EXPIRE_TTLS × ttl."""
    budget, _ = make_budget(BudgetConfig(ttl=2.0), key_prefix="app:")
    budget.withdraw("tasks.x")
    client = redis.Redis.from_url(redis_url)
    name = key("tasks.x", prefix="app:")
    assert client.type(name) == b"hash"
    assert set(client.hkeys(name)) == {b"tokens", b"reserve", b"ts"}
    assert EXPIRE_TTLS * 2000 - 1000 < client.pttl(name) <= EXPIRE_TTLS * 2000


def test_a_server_that_lost_the_script_gets_it_again(
        make_budget: Callable[..., tuple[RetryBudget, Errors]], redis_url: str) -> None:
    """After SCRIPT FLUSH, both the pipelined flush and withdraw load the script and go on."""
    budget, errors = make_budget(BudgetConfig(ratio=1.0, min_retries_per_second=0.0, ttl=NO_DECAY))
    budget.deposit("a")
    budget.flush()
    redis.Redis.from_url(redis_url).script_flush()
    budget.deposit("a")
    budget.flush()
    assert bucket(redis_url, "a")["tokens"] == pytest.approx(2.0, rel=1e-3)
    redis.Redis.from_url(redis_url).script_flush()
    assert budget.withdraw("a") is True
    assert errors == []


def test_close_writes_pending_deposits_and_stops_the_thread(
        make_budget: Callable[..., tuple[RetryBudget, Errors]], redis_url: str) -> None:
    """close() flushes what is pending, then the writer thread ends."""
    budget, _ = make_budget(flush_interval=60.0)
    budget.deposit("a")
    thread = budget._writer.thread
    budget.close()
    assert bucket(redis_url, "a")["tokens"] == pytest.approx(0.2, rel=1e-3)
    assert thread is not None
    thread.join(2)
    assert not thread.is_alive()


# -- the script is the pure function -------------------------------------------------------

@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=st.builds(BudgetConfig, ratio=st.floats(0.05, 1.0),
                        min_retries_per_second=st.floats(0.0, 20.0), ttl=st.floats(0.005, 1.0)),
       ops=st.lists(st.tuples(st.floats(0.0, 0.01), st.integers(0, 8), st.booleans()),
                    min_size=1, max_size=8))
def test_the_lua_script_computes_what_advance_computes(
        redis_url: str, config: BudgetConfig, ops: list[tuple[float, int, bool]]) -> None:
    """Replaying each call's stored server time, advance() gives the script's decision and
    balances."""
    client = redis.Redis.from_url(redis_url)
    script = client.register_script(SCRIPT)
    name = key(uuid.uuid4().hex)
    args = (repr(config.ratio), repr(config.min_retries_per_second), repr(config.ttl), 60_000)
    state: BudgetState | None = None
    for pause, deposits, withdraw in ops:
        time.sleep(pause)
        granted = script(keys=[name], args=[*args, deposits, int(withdraw)])
        stored = {k.decode(): float(v) for k, v in client.hgetall(name).items()}
        expected, state = advance(state, config, stored["ts"], deposits=deposits,
                                  withdraw=withdraw)
        assert granted == int(expected)
        assert stored["tokens"] == pytest.approx(state.tokens, rel=1e-12, abs=1e-12)
        assert stored["reserve"] == pytest.approx(state.reserve, rel=1e-12, abs=1e-12)
        state = BudgetState(stored["tokens"], stored["reserve"], stored["ts"])


# -- garbage in the bucket -------------------------------------------------------------------

GARBAGE = [
    {"tokens": "nan"}, {"tokens": "inf"}, {"tokens": "-inf"}, {"reserve": "nan"},
    {"reserve": "-inf"}, {"reserve": "inf"}, {"ts": "nan"}, {"ts": "inf"}, {"tokens": "-1"},
    {"tokens": "lots"}, {"reserve": ""},
]


@pytest.mark.parametrize("values", GARBAGE, ids=[str(v) for v in GARBAGE])
def test_a_bucket_holding_garbage_starts_afresh(
        redis_url: str, make_budget: Callable[..., tuple[RetryBudget, Errors]],
        values: dict[str, str]) -> None:
    """nan, inf, negative or text balances: the next withdraw gets a new scope's full reserve,
    the stored balances are finite again, and the budget refuses once the reserve is spent."""
    budget, errors = make_budget(BudgetConfig(ratio=0.2, min_retries_per_second=2.0))
    scope = uuid.uuid4().hex
    client = redis.Redis.from_url(redis_url)
    client.hset(key(scope), mapping={"tokens": "0", "reserve": "0", "ts": "1", **values})
    answers = [budget.withdraw(scope) for _ in range(3)]
    assert answers == [True, True, False]  # a full reserve of 2, no deposits
    stored = bucket(redis_url, scope)
    assert all(math.isfinite(value) and value >= 0 for value in stored.values()), stored
    assert client.pttl(key(scope)) > 0
    assert errors == []


def test_a_key_of_another_type_is_replaced_by_a_fresh_bucket(
        redis_url: str, make_budget: Callable[..., tuple[RetryBudget, Errors]]) -> None:
    """A string where the hash should be: withdraw answers from a new bucket, never raising."""
    budget, errors = make_budget(BudgetConfig(min_retries_per_second=1.0))
    scope = uuid.uuid4().hex
    client = redis.Redis.from_url(redis_url)
    client.set(key(scope), "not a bucket")
    assert budget.withdraw(scope) is True
    assert budget.withdraw(scope) is False
    assert client.type(key(scope)) == b"hash" and errors == []


# -- Redis down ----------------------------------------------------------------------------

def test_withdraw_fails_open_and_reports_when_redis_is_down(
        make_budget: Callable[..., tuple[RetryBudget, Errors]]) -> None:
    """Nothing listening: withdraw says yes, reports ("retry_budget", the error) once, and
    does not knock again for a while (1000 more answers are immediate)."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    budget, errors = make_budget(BudgetConfig(min_retries_per_second=0.0), url=dead)
    budget.deposit("a")
    assert budget.withdraw("a") is True
    assert [sink for sink, _ in errors] == ["retry_budget"]
    assert isinstance(errors[0][1], redis.ConnectionError)
    started = time.monotonic()
    assert all(budget.withdraw("a") for _ in range(1000))
    assert time.monotonic() - started < 0.5
    assert len(errors) == 1


def test_the_budget_recovers_when_redis_comes_back() -> None:
    """Deposits and withdrawals during an outage fail open and are reported; once the server
    is back, withdraw asks it again and the budget refuses again."""
    server = start_redis()
    errors: Errors = []
    budget = RetryBudget(f"{server.url}/0", BudgetConfig(min_retries_per_second=0.0),
                         flush_interval=0.05,
                         report_error=lambda sink, exc: errors.append((sink, exc)))
    try:
        assert budget.withdraw("a") is False
        server.stop()
        budget.deposit("a")
        wait_for(lambda: errors, timeout=5)  # the writer's failure
        assert budget.withdraw("a") is True
        assert {sink for sink, _ in errors} == {"retry_budget"}
        server.restart()
        wait_for(lambda: budget.withdraw("a") is False, timeout=5)
        for _ in range(6):  # 1.2 tokens: one retry even after a little decay
            budget.deposit("a")
        budget.flush()
        assert budget.withdraw("a") is True
    finally:
        budget.close()
        server.stop()


# -- fork safety ---------------------------------------------------------------------------

def test_a_budget_made_in_the_parent_deposits_from_a_forked_child(
        make_budget: Callable[..., tuple[RetryBudget, Errors]], redis_url: str) -> None:
    """The child, without after_fork or flush, gets its own writer thread that writes its
    deposits; the parent's deposits are not written twice."""
    budget, _ = make_budget(BudgetConfig(ttl=NO_DECAY), flush_interval=0.05)
    budget.deposit("parent")
    budget.flush()
    parent_thread = budget._writer.thread

    def child() -> bool:
        for _ in range(10):
            budget.deposit("child")
        wait_for(lambda: bucket(redis_url, "child"), timeout=5)
        return budget._writer.thread is not parent_thread and budget._writer.thread is not None \
            and budget._writer.thread.is_alive()

    assert in_child(child) is True
    assert bucket(redis_url, "child")["tokens"] == pytest.approx(2.0, rel=1e-3)
    assert bucket(redis_url, "parent")["tokens"] == pytest.approx(0.2, rel=1e-3)


def test_a_child_starts_with_no_pending_deposits(
        make_budget: Callable[..., tuple[RetryBudget, Errors]], redis_url: str) -> None:
    """Deposits pending in the parent at fork time are written by the parent only."""
    budget, _ = make_budget(BudgetConfig(ttl=NO_DECAY), flush_interval=60.0)
    for _ in range(10):
        budget.deposit("a")

    def child() -> None:
        budget.after_fork()
        for _ in range(5):
            budget.deposit("a")
        budget.flush()

    in_child(child)
    budget.flush()
    assert bucket(redis_url, "a")["tokens"] == pytest.approx(3.0, rel=1e-3)


def test_a_lock_held_by_the_parent_at_fork_does_not_block_the_child(
        make_budget: Callable[..., tuple[RetryBudget, Errors]], redis_url: str) -> None:
    """Forked while another thread held the counters' lock, the child still deposits."""
    budget, _ = make_budget(flush_interval=60.0)
    budget.deposit("a")

    def child() -> None:
        budget.deposit("b")
        budget.flush()

    with budget._writer.lock:
        in_child(child)
    assert bucket(redis_url, "b")["tokens"] == pytest.approx(0.2, rel=1e-3)
