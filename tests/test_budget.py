"""Tests for the retry budget's pure arithmetic, its settings, and the cost of a deposit."""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry_guard.stores.budget import (
    DEFAULT_MIN_RETRIES_PER_SECOND,
    DEFAULT_RATIO,
    DEFAULT_TTL,
    BudgetConfig,
    BudgetState,
    RetryBudget,
    advance,
)
from tests.servers import free_port

configs = st.builds(
    BudgetConfig,
    ratio=st.floats(min_value=0.01, max_value=1.0),
    min_retries_per_second=st.floats(min_value=0.0, max_value=50.0),
    ttl=st.floats(min_value=0.01, max_value=100.0),
)
#: One step: seconds since the previous one, first attempts deposited, whether a retry is asked.
steps = st.lists(
    st.tuples(st.floats(min_value=0.0, max_value=5.0), st.integers(min_value=0, max_value=20),
              st.booleans()),
    max_size=60,
)


def run(config: BudgetConfig, sequence: list[tuple[float, int, bool]],
        start: float = 1000.0) -> tuple[int, int, float, list[BudgetState]]:
    """Play steps from a new scope; return grants, deposits, elapsed time and every state."""
    state: BudgetState | None = None
    now, granted, deposited, states = start, 0, 0, []
    for dt, deposits, withdraw in sequence:
        now += dt
        ok, state = advance(state, config, now, deposits=deposits, withdraw=withdraw)
        granted += ok
        deposited += deposits
        states.append(state)
    return granted, deposited, now - start, states


# -- BudgetConfig ------------------------------------------------------------------------

def test_defaults_are_the_documented_constants() -> None:
    """BudgetConfig() is 20 % of first attempts, 3 retries a second minimum, 10 s decay."""
    config = BudgetConfig()
    assert (config.ratio, config.min_retries_per_second, config.ttl) == (
        DEFAULT_RATIO, DEFAULT_MIN_RETRIES_PER_SECOND, DEFAULT_TTL) == (0.2, 3.0, 10.0)


@pytest.mark.parametrize(("field", "value"), [
    ("ratio", 0), ("ratio", -0.1), ("ratio", 1.5), ("ratio", math.nan), ("ratio", "0.2"),
    ("ratio", True), ("min_retries_per_second", -1), ("min_retries_per_second", math.inf),
    ("ttl", 0), ("ttl", -5.0), ("ttl", None),
])
def test_a_bad_value_raises_value_error_naming_the_field(field: str, value: object) -> None:
    """Out-of-range, non-finite or non-numeric values are refused with the field's name."""
    with pytest.raises(ValueError, match=field):
        BudgetConfig(**{field: value})  # type: ignore[arg-type]


def test_edge_values_are_accepted_and_made_floats() -> None:
    """ratio 1 and a zero minimum are valid; integers become floats."""
    config = BudgetConfig(ratio=1, min_retries_per_second=0, ttl=2)
    assert (config.ratio, config.min_retries_per_second, config.ttl) == (1.0, 0.0, 2.0)
    assert all(isinstance(v, float) for v in (config.ratio, config.ttl))


@pytest.mark.parametrize("value", [None, False])
def test_from_setting_none_or_false_is_off(value: object) -> None:
    """An absent or False setting turns the budget off."""
    assert BudgetConfig.from_setting(value) is None


def test_from_setting_true_is_the_defaults() -> None:
    """True turns the budget on with the defaults."""
    assert BudgetConfig.from_setting(True) == BudgetConfig()


def test_from_setting_dict_overrides_fields() -> None:
    """A dict sets the fields it names; the others keep their defaults."""
    assert BudgetConfig.from_setting({"ratio": 0.1, "ttl": 30}) == BudgetConfig(
        ratio=0.1, ttl=30.0)


def test_from_setting_takes_a_config_as_it_is() -> None:
    """A BudgetConfig passes through unchanged."""
    config = BudgetConfig(ratio=0.5)
    assert BudgetConfig.from_setting(config) is config


@pytest.mark.parametrize("value", [1, 0, "yes", 0.2, [0.2], {"rate": 0.2}, {"ratio": 2}])
def test_from_setting_refuses_anything_else(value: object) -> None:
    """Other values, unknown fields and bad field values raise ValueError."""
    with pytest.raises(ValueError):
        BudgetConfig.from_setting(value)


# -- advance: examples -------------------------------------------------------------------

def test_a_new_scope_starts_with_a_full_reserve() -> None:
    """A scope never seen may retry min_retries_per_second times at once, then no more."""
    config = BudgetConfig(min_retries_per_second=3.0)
    state, grants = None, []
    for _ in range(4):
        ok, state = advance(state, config, 0.0, withdraw=True)
        grants.append(ok)
    assert grants == [True, True, True, False]


def test_each_first_attempt_deposits_ratio_tokens() -> None:
    """Five first attempts at 20 % pay for one retry; the sixth retry is refused."""
    config = BudgetConfig(ratio=0.2, min_retries_per_second=0.0)
    _, state = advance(None, config, 0.0, deposits=5)
    assert state.tokens == pytest.approx(1.0)
    ok, state = advance(state, config, 0.0, withdraw=True)
    assert ok and state.tokens == pytest.approx(0.0)
    assert advance(state, config, 0.0, withdraw=True)[0] is False


def test_the_reserve_is_taken_before_the_deposits() -> None:
    """With both at least one, a retry costs the reserve and leaves the deposits."""
    config = BudgetConfig(ratio=1.0, min_retries_per_second=2.0)
    ok, state = advance(BudgetState(3.0, 2.0, 0.0), config, 0.0, withdraw=True)
    assert ok and (state.tokens, state.reserve) == (3.0, 1.0)


def test_refused_when_reserve_and_deposits_are_each_below_one() -> None:
    """0.6 in the reserve and 0.6 in deposits do not make one retry."""
    config = BudgetConfig(ratio=1.0, min_retries_per_second=2.0)
    ok, state = advance(BudgetState(0.6, 0.6, 0.0), config, 0.0, withdraw=True)
    assert not ok and (state.tokens, state.reserve) == (0.6, 0.6)


def test_deposits_decay_with_time_constant_ttl() -> None:
    """After one ttl a balance is 1/e of what it was; after ten, almost nothing."""
    config = BudgetConfig(ttl=10.0, min_retries_per_second=0.0)
    state = BudgetState(100.0, 0.0, 0.0)
    assert advance(state, config, 10.0)[1].tokens == pytest.approx(100.0 / math.e)
    assert advance(state, config, 100.0)[1].tokens == pytest.approx(100.0 * math.exp(-10))


def test_the_reserve_refills_at_its_rate_up_to_one_seconds_worth() -> None:
    """Empty, the reserve holds rate × elapsed after a fraction of a second, and never more
    than min_retries_per_second."""
    config = BudgetConfig(min_retries_per_second=4.0)
    empty = BudgetState(0.0, 0.0, 0.0)
    assert advance(empty, config, 0.5)[1].reserve == pytest.approx(2.0)
    assert advance(empty, config, 60.0)[1].reserve == 4.0


def test_a_clock_going_back_counts_as_no_time_passing() -> None:
    """A stored time ahead of now neither refills nor decays (but the new time is kept)."""
    config = BudgetConfig(min_retries_per_second=1.0)
    _, state = advance(BudgetState(5.0, 0.0, 100.0), config, 90.0)
    assert (state.tokens, state.reserve, state.at) == (5.0, 0.0, 90.0)


def test_a_long_healthy_period_banks_about_ratio_times_rate_times_ttl() -> None:
    """100 first attempts a second for 1000 s at 20 % and ttl 10 s leave about 200 tokens."""
    config = BudgetConfig(ratio=0.2, min_retries_per_second=0.0, ttl=10.0)
    state: BudgetState | None = None
    for i in range(100_000):
        _, state = advance(state, config, i * 0.01, deposits=1)
    assert state is not None
    assert 199.0 < state.tokens <= 0.2 / (1 - math.exp(-0.01 / 10.0))


# -- advance: properties -----------------------------------------------------------------

@given(configs, steps)
def test_balances_are_never_negative_and_the_reserve_never_exceeds_its_cap(
        config: BudgetConfig, sequence: list[tuple[float, int, bool]]) -> None:
    """Whatever happens, tokens >= 0 and 0 <= reserve <= min_retries_per_second."""
    for state in run(config, sequence)[3]:
        assert state.tokens >= 0.0
        assert 0.0 <= state.reserve <= config.min_retries_per_second


@given(configs, steps)
def test_grants_never_exceed_deposits_times_ratio_plus_the_reserve(
        config: BudgetConfig, sequence: list[tuple[float, int, bool]]) -> None:
    """Over any window from a new scope: grants <= ratio × deposits + the reserve's initial
    second plus its refill over the window."""
    granted, deposited, elapsed, _ = run(config, sequence)
    rate = config.min_retries_per_second
    assert granted <= config.ratio * deposited + rate * (1.0 + elapsed) + 1e-9


@given(st.floats(min_value=0.01, max_value=1.0), steps)
def test_without_a_reserve_grants_never_exceed_deposits_times_ratio(
        ratio: float, sequence: list[tuple[float, int, bool]]) -> None:
    """With min_retries_per_second=0, retries are at most ratio × first attempts."""
    config = BudgetConfig(ratio=ratio, min_retries_per_second=0.0)
    granted, deposited, _, _ = run(config, sequence)
    assert granted <= ratio * deposited + 1e-9


@given(configs, st.floats(min_value=0.0, max_value=1e6),
       st.floats(min_value=0.0, max_value=1e4), st.floats(min_value=0.0, max_value=1e4))
def test_without_deposits_the_balance_only_shrinks(
        config: BudgetConfig, tokens: float, dt1: float, dt2: float) -> None:
    """Decay alone never increases the balance, and waiting longer leaves less."""
    start = BudgetState(tokens, 0.0, 0.0)
    first = advance(start, config, dt1)[1]
    later = advance(start, config, dt1 + dt2)[1]
    assert later.tokens <= first.tokens <= tokens


@given(configs, st.floats(min_value=0.0, max_value=50.0), st.floats(min_value=0.0, max_value=50.0),
       st.floats(min_value=0.0, max_value=10.0))
def test_a_retry_is_refused_exactly_when_reserve_and_deposits_are_below_one(
        config: BudgetConfig, tokens: float, reserve: float, dt: float) -> None:
    """The decision depends only on the decayed balance and the refilled reserve."""
    reserve = min(reserve, config.min_retries_per_second)
    _, settled = advance(BudgetState(tokens, reserve, 0.0), config, dt)
    ok, after = advance(BudgetState(tokens, reserve, 0.0), config, dt, withdraw=True)
    assert ok == (settled.reserve >= 1 or settled.tokens >= 1)
    spent = (settled.tokens - after.tokens) + (settled.reserve - after.reserve)
    assert spent == pytest.approx(1.0 if ok else 0.0)


# -- RetryBudget.deposit -----------------------------------------------------------------

def test_deposit_costs_about_a_locked_counter_increment() -> None:
    """A deposit does no I/O (nothing listens at the URL, nothing is reported): it costs
    about what a dict increment under a lock costs, timed in the same run (I/O, even to a
    local socket, would cost a hundred times more)."""
    errors: list[tuple[str, BaseException | None]] = []
    budget = RetryBudget(f"redis://127.0.0.1:{free_port()}/0", BudgetConfig(),
                         flush_interval=3600.0,
                         report_error=lambda sink, exc: errors.append((sink, exc)))
    lock, pending, pid = threading.Lock(), {"tasks.warm": 1}, os.getpid()

    def increment(scope: str) -> None:
        if pid != os.getpid():
            raise AssertionError("forked")
        with lock:
            pending[scope] = pending.get(scope, 0) + 1

    def best_of(call: Any) -> float:
        n, best = 20_000, math.inf
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(n):
                call("tasks.charge")
            best = min(best, (time.perf_counter() - started) / n)
        return best

    reference, deposit = best_of(increment), best_of(budget.deposit)
    assert errors == []
    assert deposit < 3 * reference, (
        f"deposit took {deposit * 1e9:.0f} ns, a locked increment {reference * 1e9:.0f} ns")
    budget.close()  # writes to nothing: fails open, reported
    assert [sink for sink, _ in errors] == ["retry_budget"]


@pytest.mark.parametrize("state", [
    BudgetState(math.nan, 1.0, 0.0), BudgetState(math.inf, 1.0, 0.0),
    BudgetState(0.0, -math.inf, 0.0), BudgetState(0.0, math.nan, 0.0),
    BudgetState(-1.0, 1.0, 0.0), BudgetState(0.0, 1.0, math.inf), BudgetState(0.0, 1.0, math.nan),
])
def test_a_state_holding_nan_inf_or_a_negative_balance_starts_afresh(state: BudgetState) -> None:
    """Such a state is a new scope: a full reserve, no deposits, now as its time."""
    config = BudgetConfig(ratio=0.5, min_retries_per_second=2.0)
    granted, after = advance(state, config, 100.0, withdraw=True)
    assert granted and after == BudgetState(0.0, 1.0, 100.0)
