"""Tests for telemetry_guard.breaker.state: the pure circuit-breaker state machine."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_guard.breaker.state import (
    CLOSED,
    DISABLED,
    EDGES,
    FAILURE,
    FORCED_OPEN,
    HALF_OPEN,
    IGNORED,
    METRICS_ONLY,
    MODES,
    NORMAL,
    OPEN,
    STATES,
    SUCCESS,
    Admission,
    BreakerConfig,
    BreakerMachine,
    Transition,
)

#: Reasons of transitions an operator causes; they may jump between any two states.
COMMAND_REASONS = {"reset", "forced", "mode_forced_open", "mode_disabled"}
#: Reasons of transitions that the passing of time alone causes.
TIMED_REASONS = {"reset_timeout_elapsed", "half_open_timed_out"}


def machine(**overrides: object) -> BreakerMachine:
    settings_: dict[str, object] = dict(failure_threshold=3, reset_timeout=10.0)
    settings_.update(overrides)
    return BreakerMachine(BreakerConfig(**settings_))  # type: ignore[arg-type]


def fail(m: BreakerMachine, now: float = 0.0) -> tuple[Transition, ...]:
    admission = m.admit(now)
    assert admission.admitted
    return m.record(now, FAILURE, admission.generation, admission.permit)


def succeed(m: BreakerMachine, now: float = 0.0) -> tuple[Transition, ...]:
    admission = m.admit(now)
    assert admission.admitted
    return m.record(now, SUCCESS, admission.generation, admission.permit)


def opened(m: BreakerMachine, now: float = 0.0) -> BreakerMachine:
    for _ in range(m.config.failure_threshold):
        fail(m, now)
    assert m.state == OPEN
    return m


@pytest.mark.parametrize("field_name, value", [
    ("failure_threshold", 0), ("failure_threshold", 2.5), ("failure_threshold", True),
    ("reset_timeout", 0), ("reset_timeout", -1.0), ("reset_timeout", float("inf")),
    ("reset_timeout", "60"), ("half_open_max_calls", 0), ("failure_rate_threshold", 0.0),
    ("failure_rate_threshold", 1.5), ("window_size", 0), ("minimum_calls", 0),
    ("half_open_max_duration", 0.0), ("permit_ttl", -2.0),
])
def test_config_rejects_a_bad_value_with_an_error_naming_the_field(
        field_name: str, value: object) -> None:
    """Each invalid setting raises ValueError whose message starts with the field's name."""
    with pytest.raises(ValueError, match=f"^{field_name} "):
        BreakerConfig(**{field_name: value})  # type: ignore[arg-type]


def test_config_derives_half_open_cap_and_permit_ttl_from_reset_timeout() -> None:
    """By default half-open lasts at most 2 × reset_timeout and a permit's lease reset_timeout."""
    config = BreakerConfig(reset_timeout=30)
    assert config.half_open_max_duration == 60.0
    assert config.permit_ttl == 30.0
    assert BreakerConfig(window_size=10, minimum_calls=20).rate_minimum == 10


def test_consecutive_failures_open_the_breaker_at_the_threshold() -> None:
    """Two failures leave it closed; the third opens it and increments the generation."""
    m = machine()
    assert fail(m) == () and fail(m) == ()
    assert m.state == CLOSED and m.consecutive_failures == 2
    assert fail(m) == (Transition(CLOSED, OPEN, "consecutive_failures"),)
    assert m.state == OPEN and m.generation == 1 and m.consecutive_failures == 0


def test_a_success_resets_the_consecutive_failure_count() -> None:
    """Failures separated by successes never reach the threshold."""
    m = machine()
    for _ in range(10):
        fail(m)
        fail(m)
        succeed(m)
    assert m.state == CLOSED and m.consecutive_failures == 0


def test_an_ignored_outcome_is_neither_success_nor_failure() -> None:
    """An interrupted call leaves the consecutive count as it was."""
    m = machine()
    fail(m)
    m.record(0.0, IGNORED, m.generation)
    assert m.consecutive_failures == 1


def test_open_breaker_rejects_with_the_time_left_until_half_open() -> None:
    """While open, calls are refused with retry_after = reset_timeout minus time spent open."""
    m = opened(machine(), now=100.0)
    admission = m.admit(104.0)
    assert not admission.admitted
    assert admission.retry_after == pytest.approx(6.0)
    assert m.retry_after(110.0) == 0.0


def test_after_reset_timeout_the_next_call_moves_it_to_half_open_with_a_permit() -> None:
    """The first call after reset_timeout makes the open → half_open transition and is a trial."""
    m = opened(machine(), now=0.0)
    admission = m.admit(10.0)
    assert admission.admitted and admission.permit is not None
    assert admission.transitions == (Transition(OPEN, HALF_OPEN, "reset_timeout_elapsed"),)
    assert m.state == HALF_OPEN and m.generation == 2


def test_half_open_admits_exactly_half_open_max_calls_trials() -> None:
    """With three permits, the fourth concurrent call is rejected."""
    m = opened(machine(half_open_max_calls=3))
    admissions = [m.admit(10.0) for _ in range(5)]
    assert [a.admitted for a in admissions] == [True, True, True, False, False]
    assert len({a.permit for a in admissions[:3]}) == 3
    assert admissions[3].retry_after > 0


def test_every_trial_must_succeed_before_the_breaker_closes() -> None:
    """Closed only after all half_open_max_calls trials succeed; the count is not re-admitted."""
    m = opened(machine(half_open_max_calls=2))
    first, second = m.admit(10.0), m.admit(10.0)
    assert m.record(10.0, SUCCESS, first.generation, first.permit) == ()
    assert m.state == HALF_OPEN
    assert not m.admit(10.0).admitted  # one success plus one trial in flight fill both slots
    closing = m.record(10.0, SUCCESS, second.generation, second.permit)
    assert closing == (Transition(HALF_OPEN, CLOSED, "half_open_trials_succeeded"),)
    assert m.state == CLOSED and m.generation == 3


def test_a_failed_trial_reopens_the_breaker() -> None:
    """A trial failure goes back to open and restarts the reset_timeout."""
    m = opened(machine(half_open_max_calls=2))
    trial = m.admit(10.0)
    assert m.record(11.0, FAILURE, trial.generation, trial.permit) == (
        Transition(HALF_OPEN, OPEN, "half_open_trial_failed"),)
    assert m.state == OPEN and m.retry_after(11.0) == pytest.approx(10.0)


def test_an_outcome_from_an_older_generation_changes_nothing() -> None:
    """A late trial result, or a failure admitted before a reset, is ignored."""
    m = opened(machine(half_open_max_calls=2))
    late = m.admit(10.0)
    other = m.admit(10.0)
    m.record(10.0, FAILURE, other.generation, other.permit)  # reopens: generation 3
    assert m.record(10.0, SUCCESS, late.generation, late.permit) == ()
    assert m.state == OPEN
    closed_admission = machine().admit(0.0)
    m.reset(10.0)
    for _ in range(5):
        m.record(10.0, FAILURE, closed_admission.generation)
    assert m.state == CLOSED and m.consecutive_failures == 0


def test_an_expired_permit_frees_its_slot_and_its_late_success_does_not_count() -> None:
    """A crashed trial blocks half-open only until its lease (permit_ttl) expires."""
    m = opened(machine(half_open_max_calls=1, permit_ttl=2.0, half_open_max_duration=100.0))
    crashed = m.admit(10.0)
    rejected = m.admit(11.0)
    assert not rejected.admitted and rejected.retry_after == pytest.approx(1.0)
    replacement = m.admit(12.0)
    assert replacement.admitted and replacement.permit != crashed.permit
    assert m.record(12.5, SUCCESS, crashed.generation, crashed.permit) == ()
    assert m.state == HALF_OPEN
    m.record(12.5, SUCCESS, replacement.generation, replacement.permit)
    assert m.state == CLOSED


def test_half_open_for_longer_than_its_cap_reopens() -> None:
    """Half-open that never completes its trials re-opens after half_open_max_duration."""
    m = opened(machine(half_open_max_calls=2, half_open_max_duration=5.0, permit_ttl=100.0))
    m.admit(10.0)
    admission = m.admit(15.0)
    assert not admission.admitted
    assert admission.transitions == (Transition(HALF_OPEN, OPEN, "half_open_timed_out"),)
    assert m.state == OPEN and m.permits == {}


def test_failure_rate_trips_only_once_minimum_calls_are_recorded() -> None:
    """At 50 % over a window of 10 with minimum 6, the fifth failure in a row does not trip."""
    m = machine(failure_threshold=100, failure_rate_threshold=0.5, window_size=10,
                minimum_calls=6)
    for _ in range(5):
        assert fail(m) == ()
    assert m.state == CLOSED
    assert fail(m) == (Transition(CLOSED, OPEN, "failure_rate"),)


def test_failure_rate_is_measured_over_the_last_window_size_calls() -> None:
    """Older successes slide out: 3 failures in the last 4 calls trip at 75 %, not 3 of 9."""
    m = machine(failure_threshold=100, failure_rate_threshold=0.75, window_size=4,
                minimum_calls=4)
    for outcome in (SUCCESS,) * 6 + (FAILURE, FAILURE):
        admission = m.admit(0.0)
        assert m.record(0.0, outcome, admission.generation) == ()
    assert list(m.window or ()) == [0, 0, 1, 1] and m.window_failures == 2
    assert m.snapshot("b", 0.0).failure_rate == 0.5
    assert fail(m) == (Transition(CLOSED, OPEN, "failure_rate"),)


def test_reset_closes_and_clears_every_counter() -> None:
    """reset() from open goes to closed; from closed it only clears the counts."""
    m = opened(machine())
    assert m.reset(1.0) == (Transition(OPEN, CLOSED, "reset"),)
    fail(m)
    assert m.reset(1.0) == () and m.consecutive_failures == 0


def test_force_open_opens_now_and_half_opens_after_reset_timeout() -> None:
    """force_open() is an ordinary open: trials start reset_timeout later."""
    m = machine()
    assert m.force_open(5.0) == (Transition(CLOSED, OPEN, "forced"),)
    assert not m.admit(14.0).admitted
    assert m.admit(15.0).admitted and m.state == HALF_OPEN


def test_disabled_mode_passes_every_call_and_records_nothing() -> None:
    """In mode disabled an open breaker closes and no outcome is counted."""
    m = opened(machine())
    assert m.set_mode(DISABLED, 1.0) == (Transition(OPEN, CLOSED, "mode_disabled"),)
    admission = m.admit(1.0)
    assert admission.admitted and not admission.record
    for _ in range(10):
        m.record(1.0, FAILURE, admission.generation)
    assert m.state == CLOSED and m.consecutive_failures == 0


def test_forced_open_mode_rejects_until_the_mode_changes() -> None:
    """forced_open opens the breaker and never half-opens it, however long it waits."""
    m = machine()
    assert m.set_mode(FORCED_OPEN, 0.0) == (Transition(CLOSED, OPEN, "mode_forced_open"),)
    assert not m.admit(1000.0).admitted and m.state == OPEN
    m.set_mode(NORMAL, 1000.0)
    assert m.admit(1000.0).permit is not None and m.state == HALF_OPEN


def test_metrics_only_mode_admits_when_open_but_still_transitions() -> None:
    """metrics_only never rejects, yet the breaker opens and half-opens as in normal mode."""
    m = machine(half_open_max_calls=1)
    m.set_mode(METRICS_ONLY, 0.0)
    opened(m)
    assert m.admit(1.0).admitted
    trial = m.admit(10.0)
    assert trial.permit is not None and m.state == HALF_OPEN
    extra = m.admit(10.0)
    assert extra.admitted and extra.permit is None
    m.record(10.0, FAILURE, extra.generation, extra.permit)  # not a trial: does not count
    assert m.state == HALF_OPEN


def test_set_mode_rejects_an_unknown_mode() -> None:
    """A mode outside the four raises ValueError naming the field."""
    with pytest.raises(ValueError, match="^mode "):
        machine().set_mode("off", 0.0)


# -- properties ---------------------------------------------------------------------------


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 6))
def test_closed_breaker_opens_exactly_at_the_first_run_of_threshold_failures(
        outcomes: list[bool], threshold: int) -> None:
    """The consecutive rule opens the breaker at the first run of `threshold` failures."""
    m = machine(failure_threshold=threshold)
    run, expected = 0, None
    for index, failed in enumerate(outcomes):
        run = run + 1 if failed else 0
        if run == threshold:
            expected = index
            break
    for index, failed in enumerate(outcomes):
        admission = m.admit(0.0)
        if not admission.admitted:
            break
        transitions = m.record(0.0, FAILURE if failed else SUCCESS, admission.generation)
        assert bool(transitions) == (index == expected)
    assert m.state == (CLOSED if expected is None else OPEN)


@given(st.lists(st.booleans(), max_size=80), st.integers(1, 12), st.integers(1, 12),
       st.sampled_from([0.2, 0.5, 0.75, 1.0]))
def test_failure_rate_trips_at_the_first_full_enough_window_over_the_threshold(
        outcomes: list[bool], window_size: int, minimum_calls: int, rate: float) -> None:
    """The rate rule matches a brute-force count over the last window_size outcomes."""
    m = machine(failure_threshold=1000, failure_rate_threshold=rate, window_size=window_size,
                minimum_calls=minimum_calls)
    expected = None
    for index in range(len(outcomes)):
        window = outcomes[max(0, index + 1 - window_size):index + 1]
        if len(window) >= min(minimum_calls, window_size) and sum(window) >= rate * len(window):
            expected = index
            break
    for index, failed in enumerate(outcomes):
        admission = m.admit(0.0)
        if not admission.admitted:
            break
        transitions = m.record(0.0, FAILURE if failed else SUCCESS, admission.generation)
        assert bool(transitions) == (index == expected)
        if transitions:
            assert transitions[0].reason == "failure_rate"


@dataclass
class Run:
    """What a random sequence of operations has seen so far."""

    machine: BreakerMachine
    now: float = 0.0
    held: list[Admission] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    state: str = CLOSED


CALL = st.tuples(st.just("call"), st.sampled_from([SUCCESS, FAILURE, FAILURE, IGNORED]))
ADVANCE = st.tuples(st.just("advance"), st.floats(0.0, 8.0))
ACQUIRE = st.tuples(st.just("acquire"), st.none())
FINISH = st.tuples(st.just("finish"), st.tuples(st.integers(0, 10), st.sampled_from(
    [SUCCESS, SUCCESS, FAILURE, IGNORED])))
COMMAND = st.tuples(st.just("command"), st.sampled_from(["reset", "force_open", *MODES]))
#: Calls, holds and finishes are frequent; commands rare enough that trips and trials happen.
OPERATIONS = st.one_of(CALL, CALL, CALL, ADVANCE, ADVANCE, ACQUIRE, ACQUIRE, ACQUIRE,
                       FINISH, FINISH, FINISH, COMMAND)


def check(run: Run, new: tuple[Transition, ...]) -> None:
    """Assert the invariants that hold after every operation."""
    m = run.machine
    for t in new:
        assert t.from_state == run.state, "a transition starts where the last one ended"
        assert (t.from_state, t.to_state) in EDGES or t.reason in COMMAND_REASONS
        run.state = t.to_state
    run.transitions.extend(new)
    assert m.state == run.state and m.state in STATES and m.mode in MODES
    assert m.generation == len(run.transitions)
    config = m.config
    live = [expiry for expiry in m.permits.values() if expiry > run.now]
    if m.state == CLOSED:
        assert not m.permits and m.half_open_successes == 0
        assert m.consecutive_failures < config.failure_threshold
        window = m.window
        if window is not None and len(window) >= config.rate_minimum:
            assert m.window_failures < (config.failure_rate_threshold or 0) * len(window)
    elif m.state == OPEN:
        assert not m.permits and m.consecutive_failures == 0
    else:
        assert m.half_open_successes < config.half_open_max_calls
        assert len(live) + m.half_open_successes <= config.half_open_max_calls
    if m.window is not None:
        assert len(m.window) <= config.window_size
        assert m.window_failures == sum(m.window)
    assert m.retry_after(run.now) >= 0.0


def admit(run: Run) -> Admission:
    m = run.machine
    mode = m.mode
    before = m.state
    admission = m.admit(run.now)
    check(run, admission.transitions)
    if mode == DISABLED:
        assert admission.admitted and not admission.record
    elif mode == FORCED_OPEN:
        assert not admission.admitted and admission.retry_after > 0
    elif mode == METRICS_ONLY:
        assert admission.admitted
    if admission.admitted and mode == NORMAL:
        assert m.state == CLOSED or admission.permit is not None, "open never admits a call"
    if admission.permit is not None:
        assert m.state == HALF_OPEN and admission.permit in m.permits
    if not admission.admitted:
        assert before != CLOSED or mode == FORCED_OPEN
        assert admission.retry_after >= 0.0
    return admission


@settings(max_examples=500)
@given(st.integers(1, 4), st.floats(1.0, 10.0), st.integers(1, 3),
       st.sampled_from([None, 0.5]), st.floats(0.5, 20.0), st.floats(0.5, 20.0),
       st.lists(OPERATIONS, max_size=150))
def test_random_operation_sequences_never_reach_an_impossible_state(
        threshold: int, reset_timeout: float, max_calls: int, rate: float | None,
        half_open_cap: float, permit_ttl: float, operations: list[tuple[str, object]]) -> None:
    """Calls, time, held trials, late outcomes and commands keep every invariant."""
    run = Run(machine(failure_threshold=threshold, reset_timeout=reset_timeout,
                      half_open_max_calls=max_calls, failure_rate_threshold=rate,
                      window_size=5, minimum_calls=3, half_open_max_duration=half_open_cap,
                      permit_ttl=permit_ttl))
    m = run.machine
    granted: dict[int, int] = {}
    released: dict[int, int] = {}

    def finish(admission: Admission, outcome: str) -> None:
        generation = m.generation
        counts = (m.consecutive_failures, m.half_open_successes, m.window_failures,
                  len(m.window or ()))
        new = m.record(run.now, outcome, admission.generation, admission.permit)
        check(run, new)
        if admission.generation != generation:
            assert all(t.reason in TIMED_REASONS for t in new), "a stale outcome changes nothing"
            if not new:
                assert counts == (m.consecutive_failures, m.half_open_successes,
                                  m.window_failures, len(m.window or ()))
        elif outcome == IGNORED and admission.permit is not None:
            released[generation] = released.get(generation, 0) + 1

    for kind, value in operations:
        if kind in ("call", "acquire"):
            admission = admit(run)
            if admission.permit is not None:
                assert admission.permit.startswith(f"{admission.generation}:")
                granted[admission.generation] = granted.get(admission.generation, 0) + 1
            if admission.admitted and kind == "call":
                finish(admission, str(value))
            elif admission.admitted:
                run.held.append(admission)
        elif kind == "advance":
            run.now += float(value)  # type: ignore[arg-type]
        elif kind == "finish" and run.held:
            index, outcome = value  # type: ignore[misc]
            finish(run.held.pop(index % len(run.held)), outcome)
        elif kind == "command":
            command = str(value)
            if command in MODES:
                check(run, m.set_mode(command, run.now))
            else:
                check(run, getattr(m, command)(run.now))
    if permit_ttl >= half_open_cap:  # no lease can expire within one half-open period
        for generation, count in granted.items():
            assert count <= max_calls + released.get(generation, 0), "trials beyond the cap"
