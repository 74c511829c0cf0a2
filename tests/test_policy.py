"""Tests for telemetry_guard.core.policy: backoff, jitter, retry decisions, broker horizon."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry_guard.core.policy import (
    DEFAULT_RETRY_POLICY,
    HORIZON_MARGIN,
    JITTER_MODES,
    RetryPolicy,
    cap_below_horizon,
)

DRAWS = 10_000


class PermanentError(ConnectionError):
    """A connection error the tests mark as not worth retrying."""


def draws(policy: RetryPolicy, attempt: int, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [policy.delay(attempt, rng) for _ in range(DRAWS)]


def test_default_policy_retries_connection_and_timeout_errors_three_times() -> None:
    """The default policy uses full jitter and retries ConnectionError and TimeoutError 3 times."""
    policy = DEFAULT_RETRY_POLICY
    assert policy == RetryPolicy()
    assert policy.jitter == "full"
    assert policy.max_retries == 3
    assert policy.should_retry(ConnectionResetError())
    assert policy.should_retry(TimeoutError())
    assert not policy.should_retry(ValueError())


def test_no_jitter_doubles_from_base_delay_until_max_delay() -> None:
    """With jitter "none" the delays are exactly 1, 2, 4, ... up to the cap."""
    policy = RetryPolicy(jitter="none", base_delay=1.0, max_delay=60.0)
    delays = [policy.delay(attempt) for attempt in range(1, 9)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_backoff_factor_sets_the_growth_of_the_exponential() -> None:
    """The exponential value is base_delay * backoff_factor ** (attempt - 1)."""
    policy = RetryPolicy(jitter="none", base_delay=0.5, backoff_factor=3.0, max_delay=100.0)
    assert [policy.delay(attempt) for attempt in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 13.5]


def test_full_jitter_is_uniform_between_zero_and_the_capped_value() -> None:
    """Full jitter stays in [0, capped] with a mean of about capped / 2."""
    values = draws(RetryPolicy(jitter="full", base_delay=1.0, max_delay=60.0), attempt=4)
    assert min(values) >= 0.0
    assert max(values) <= 8.0
    assert statistics.fmean(values) == pytest.approx(4.0, rel=0.03)
    assert min(values) < 0.1
    assert max(values) > 7.9


def test_equal_jitter_stays_in_the_upper_half_of_the_capped_value() -> None:
    """Equal jitter stays in [capped / 2, capped] with a mean of about 3/4 capped."""
    values = draws(RetryPolicy(jitter="equal", base_delay=1.0, max_delay=60.0), attempt=4)
    assert min(values) >= 4.0
    assert max(values) <= 8.0
    assert statistics.fmean(values) == pytest.approx(6.0, rel=0.02)


def test_decorrelated_jitter_draws_between_base_and_three_times_previous() -> None:
    """Decorrelated jitter is uniform in [base_delay, 3 * previous], capped at max_delay."""
    policy = RetryPolicy(jitter="decorrelated", base_delay=1.0, max_delay=60.0)
    rng = random.Random(7)
    values = [policy.delay(5, rng, previous=4.0) for _ in range(DRAWS)]
    assert min(values) >= 1.0
    assert max(values) <= 12.0
    assert statistics.fmean(values) == pytest.approx(6.5, rel=0.03)


def test_decorrelated_jitter_without_previous_uses_base_then_the_last_exponential() -> None:
    """Without previous, attempt 1 uses base_delay and attempt n the exponential of n - 1."""
    policy = RetryPolicy(jitter="decorrelated", base_delay=2.0, max_delay=60.0)
    first = draws(policy, attempt=1)
    assert 2.0 <= min(first) and max(first) <= 6.0
    fourth = draws(policy, attempt=4)  # previous = 2 * 2 ** 2 = 8, so uniform(2, 24)
    assert 2.0 <= min(fourth) and max(fourth) <= 24.0
    assert max(fourth) > 23.0


def test_decorrelated_jitter_is_capped_at_max_delay() -> None:
    """A large previous delay never takes decorrelated jitter past max_delay."""
    policy = RetryPolicy(jitter="decorrelated", base_delay=1.0, max_delay=10.0)
    rng = random.Random(3)
    values = [policy.delay(2, rng, previous=1000.0) for _ in range(1000)]
    assert max(values) == 10.0
    assert min(values) >= 1.0


def test_cap_is_applied_before_jitter_so_late_retries_stay_spread() -> None:
    """With full jitter at attempt 50 the delays spread over [0, max_delay] instead of piling up."""
    values = draws(RetryPolicy(jitter="full", max_delay=60.0), attempt=50)
    assert all(0.0 <= value <= 60.0 for value in values)
    assert values.count(60.0) == 0
    assert statistics.fmean(values) == pytest.approx(30.0, rel=0.03)
    assert min(values) < 1.0


def test_huge_attempts_saturate_instead_of_overflowing() -> None:
    """Attempt 10_000 returns a delay within bounds for every jitter mode, no OverflowError."""
    for mode in JITTER_MODES:
        policy = RetryPolicy(jitter=mode, max_delay=60.0)
        assert 0.0 <= policy.delay(10_000, random.Random(0)) <= 60.0
    assert RetryPolicy(jitter="none").delay(10_000) == 60.0


def test_min_delay_is_a_floor_for_every_jitter_mode() -> None:
    """No delay drops below min_delay, even for full jitter."""
    for mode in JITTER_MODES:
        policy = RetryPolicy(jitter=mode, base_delay=1.0, max_delay=30.0, min_delay=5.0)
        values = [policy.delay(attempt, random.Random(attempt)) for attempt in range(1, 12)]
        assert min(values) >= 5.0
        assert max(values) <= 30.0


def test_zero_base_delay_gives_zero_delays() -> None:
    """A zero base_delay means immediate retries without any arithmetic error."""
    policy = RetryPolicy(base_delay=0.0, max_delay=0.0, jitter="full")
    assert policy.delay(10_000) == 0.0


def test_rng_may_be_any_object_with_uniform() -> None:
    """The rng argument only needs a uniform(a, b) method."""

    class Highest:
        def uniform(self, a: float, b: float) -> float:
            return max(a, b)

    policy = RetryPolicy(jitter="full", base_delay=1.0, max_delay=60.0)
    assert policy.delay(3, Highest()) == 4.0


def test_the_result_is_clamped_even_when_rng_misbehaves() -> None:
    """An rng returning NaN, infinity or a negative number still yields a delay in bounds."""

    class Broken:
        def __init__(self, value: float) -> None:
            self.value = value

        def uniform(self, a: float, b: float) -> float:
            return self.value

    policy = RetryPolicy(jitter="full", max_delay=60.0, min_delay=0.5)
    assert policy.delay(3, Broken(math.nan)) == 0.5
    assert policy.delay(3, Broken(math.inf)) == 60.0
    assert policy.delay(3, Broken(-4.0)) == 0.5


def test_delay_rejects_attempts_below_one() -> None:
    """Attempt counts start at 1; zero or a negative attempt is a caller bug."""
    with pytest.raises(ValueError, match="attempt"):
        RetryPolicy().delay(0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 2.5}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"base_delay": -1.0}, "base_delay"),
        ({"base_delay": math.nan}, "base_delay"),
        ({"max_delay": -1.0}, "max_delay"),
        ({"max_delay": 0.5}, "max_delay"),
        ({"max_delay": math.inf}, "max_delay"),
        ({"min_delay": -0.1}, "min_delay"),
        ({"min_delay": 61.0}, "min_delay"),
        ({"backoff_factor": 0.5}, "backoff_factor"),
        ({"backoff_factor": math.inf}, "backoff_factor"),
        ({"jitter": "fuzzy"}, "jitter"),
        ({"jitter": "FULL"}, "jitter"),
    ],
)
def test_invalid_fields_raise_value_error_naming_the_field(kwargs: dict, field: str) -> None:
    """Each invalid setting raises ValueError whose message names the offending field."""
    with pytest.raises(ValueError, match=f"RetryPolicy.{field}"):
        RetryPolicy(**kwargs)


def test_max_delay_below_base_delay_message_shows_both_values() -> None:
    """The message for max_delay < base_delay shows both numbers."""
    with pytest.raises(ValueError) as info:
        RetryPolicy(max_delay=0.5, base_delay=1.0)
    assert str(info.value) == "RetryPolicy.max_delay (0.5) must be >= base_delay (1.0)"


@pytest.mark.parametrize("field", ["retry_on", "dont_retry_on"])
@pytest.mark.parametrize("value", ["ConnectionError", (ConnectionError, int), 42, ValueError()])
def test_exception_fields_reject_non_exception_classes(field: str, value: object) -> None:
    """retry_on and dont_retry_on raise TypeError naming the field for non-exception values."""
    with pytest.raises(TypeError, match=f"RetryPolicy.{field}"):
        RetryPolicy(**{field: value})


def test_single_exception_class_is_normalised_to_a_tuple() -> None:
    """A single class or a list given for retry_on/dont_retry_on is stored as a tuple."""
    policy = RetryPolicy(retry_on=OSError, dont_retry_on=[PermissionError])  # type: ignore[arg-type]
    assert policy.retry_on == (OSError,)
    assert policy.dont_retry_on == (PermissionError,)
    assert hash(policy) == hash(RetryPolicy(retry_on=(OSError,), dont_retry_on=(PermissionError,)))


def test_numbers_are_stored_as_floats() -> None:
    """Integer durations are accepted and stored as floats."""
    policy = RetryPolicy(base_delay=2, max_delay=120, backoff_factor=3, min_delay=1)
    assert (policy.base_delay, policy.max_delay, policy.backoff_factor, policy.min_delay) == (
        2.0,
        120.0,
        3.0,
        1.0,
    )
    assert isinstance(policy.base_delay, float)


def test_dont_retry_on_wins_over_retry_on() -> None:
    """An exception matching both retry_on and dont_retry_on is not retried."""
    policy = RetryPolicy(retry_on=(ConnectionError,), dont_retry_on=(PermanentError,))
    assert policy.should_retry(ConnectionError())
    assert not policy.should_retry(PermanentError())


def test_subclasses_of_retry_on_are_retried() -> None:
    """retry_on matches subclasses, as isinstance does."""
    assert RetryPolicy(retry_on=OSError).should_retry(ConnectionRefusedError())  # type: ignore[arg-type]


def test_allows_retry_stops_at_max_retries() -> None:
    """allows_retry is true below max_retries and false once max_retries retries were done."""
    policy = RetryPolicy(max_retries=2)
    assert policy.allows_retry(ConnectionError(), 0)
    assert policy.allows_retry(ConnectionError(), 1)
    assert not policy.allows_retry(ConnectionError(), 2)
    assert not policy.allows_retry(ConnectionError(), 3)
    assert not policy.allows_retry(ValueError(), 0)


def test_zero_max_retries_never_allows_a_retry() -> None:
    """max_retries=0 means a retryable error is given up on at once."""
    assert not RetryPolicy(max_retries=0).allows_retry(ConnectionError(), 0)


def test_policy_is_frozen() -> None:
    """A RetryPolicy cannot be changed after construction."""
    with pytest.raises(AttributeError):
        RetryPolicy().max_retries = 10  # type: ignore[misc]


def test_cap_below_horizon_keeps_a_ten_percent_margin() -> None:
    """A countdown is capped at 90 % of the horizon; None means no horizon."""
    assert HORIZON_MARGIN == 0.9
    assert cap_below_horizon(5000.0, 3600.0) == pytest.approx(3240.0)
    assert cap_below_horizon(3600.0, 3600.0) == pytest.approx(3240.0)
    assert cap_below_horizon(120.0, 3600.0) == 120.0
    assert cap_below_horizon(5000.0, None) == 5000.0


@pytest.mark.parametrize("horizon", [0.0, -1.0, math.nan])
def test_cap_below_horizon_rejects_a_meaningless_horizon(horizon: float) -> None:
    """A zero, negative or NaN horizon is a configuration error, not a zero countdown."""
    with pytest.raises(ValueError, match="horizon"):
        cap_below_horizon(10.0, horizon)


@st.composite
def policies(draw: st.DrawFn) -> RetryPolicy:
    base = draw(st.floats(min_value=0.0, max_value=100.0))
    cap = draw(st.floats(min_value=base, max_value=10_000.0))
    floor = draw(st.floats(min_value=0.0, max_value=cap))
    return RetryPolicy(
        max_retries=draw(st.integers(min_value=0, max_value=100)),
        base_delay=base,
        max_delay=cap,
        min_delay=floor,
        backoff_factor=draw(st.floats(min_value=1.0, max_value=10.0)),
        jitter=draw(st.sampled_from(JITTER_MODES)),
    )


@given(
    policy=policies(),
    attempt=st.integers(min_value=1, max_value=10_000),
    seed=st.integers(min_value=0, max_value=2**32),
    previous=st.none() | st.floats(min_value=0.0, max_value=1e6),
)
def test_delay_always_within_min_and_max_delay(
    policy: RetryPolicy, attempt: int, seed: int, previous: float | None
) -> None:
    """For any valid policy, attempt and jitter mode, min_delay <= delay <= max_delay."""
    value = policy.delay(attempt, random.Random(seed), previous=previous)
    assert policy.min_delay <= value <= policy.max_delay
