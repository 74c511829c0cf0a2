"""Tests for CircuitBreaker with storage="memory": the ways to call it, modes, hooks, registry."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from telemetry_guard.breaker import (
    CircuitBreaker,
    CircuitOpenError,
    all_breakers,
    get_breaker,
    set_call_listener,
    set_error_listener,
    set_transition_listener,
)
from telemetry_guard.core.events import BreakerChange
from telemetry_guard.exceptions import CircuitOpenError as PublicCircuitOpenError


class RemoteDown(Exception):
    """The dependency behind the breaker failed."""


class NotFound(Exception):
    """A 404: the dependency answered, so it is not failing."""


@dataclass
class Heard:
    """Everything the three breaker listeners received."""

    changes: list[BreakerChange] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, BaseException | None]] = field(default_factory=list)

    def edges(self) -> list[tuple[str, str]]:
        return [(c.from_state, c.to_state) for c in self.changes]


@pytest.fixture
def heard() -> Iterator[Heard]:
    """Installs recording listeners, and restores the previous ones afterwards."""
    record = Heard()
    previous = (set_transition_listener(record.changes.append),
                set_call_listener(lambda name, outcome: record.calls.append((name, outcome))),
                set_error_listener(lambda sink, exc: record.errors.append((sink, exc))))
    yield record
    set_transition_listener(previous[0])
    set_call_listener(previous[1])
    set_error_listener(previous[2])


def memory_breaker(name: str = "payments", **settings: Any) -> CircuitBreaker:
    settings.setdefault("failure_threshold", 2)
    settings.setdefault("reset_timeout", 0.05)
    return CircuitBreaker(name, storage="memory", **settings)


def boom() -> None:
    raise RemoteDown("connection refused")


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.config.failure_threshold):
        with pytest.raises(RemoteDown):
            breaker.call(boom)
    assert breaker.state == "open"


def test_call_runs_the_function_with_its_arguments_and_returns_its_result() -> None:
    """call(fn, *args, **kwargs) is fn(*args, **kwargs) while the breaker is closed."""
    breaker = memory_breaker()
    assert breaker.call(lambda a, b=0: a + b, 2, b=3) == 5
    assert breaker.state == "closed"


def test_the_decorator_guards_every_call_and_keeps_the_function_name() -> None:
    """@breaker wraps the function; its failures open the breaker."""
    breaker = memory_breaker()

    @breaker
    def fetch(fail: bool) -> str:
        if fail:
            raise RemoteDown()
        return "ok"

    assert fetch.__name__ == "fetch" and fetch(False) == "ok"
    for _ in range(2):
        with pytest.raises(RemoteDown):
            fetch(True)
    with pytest.raises(CircuitOpenError):
        fetch(False)


def test_the_context_manager_counts_exceptions_inside_as_failures() -> None:
    """`with breaker:` records the block's outcome; an open breaker raises on entry."""
    breaker = memory_breaker()
    ran = []
    for _ in range(2):
        with pytest.raises(RemoteDown), breaker:
            ran.append(1)
            raise RemoteDown()
    with pytest.raises(CircuitOpenError) as info, breaker:
        ran.append(2)
    assert ran == [1, 1]
    assert 0 < info.value.retry_after <= 0.05


def test_the_context_manager_records_a_clean_block_as_a_success() -> None:
    """A block that does not raise resets the consecutive failure count."""
    breaker = memory_breaker(failure_threshold=3)
    with pytest.raises(RemoteDown), breaker:
        raise RemoteDown()
    with breaker:
        pass
    assert breaker.snapshot().consecutive_failures == 0


def test_nested_context_managers_record_each_block_once() -> None:
    """Entering the same breaker twice keeps one admission per block."""
    breaker = memory_breaker(failure_threshold=3)
    with pytest.raises(RemoteDown), breaker:
        with breaker:
            pass
        raise RemoteDown()
    assert breaker.snapshot().consecutive_failures == 1


def test_excluded_exceptions_count_as_successes(heard: Heard) -> None:
    """A NotFound listed in exclude propagates but never opens the breaker."""
    breaker = memory_breaker(exclude=(NotFound,))

    def missing() -> None:
        raise NotFound()

    for _ in range(5):
        with pytest.raises(NotFound):
            breaker.call(missing)
    assert breaker.state == "closed"
    assert heard.calls == [("payments", "success")] * 5


def test_a_single_excluded_class_is_accepted() -> None:
    """exclude may be one exception class instead of a tuple."""
    assert memory_breaker(exclude=NotFound).exclude == (NotFound,)


def test_an_open_breaker_raises_circuit_open_error_with_retry_after() -> None:
    """The error names the breaker and the seconds until half-open, and does not call fn."""
    breaker = memory_breaker(reset_timeout=30.0)
    trip(breaker)
    called = []
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(called.append, 1)
    assert CircuitOpenError is PublicCircuitOpenError
    assert info.value.breaker == "payments"
    assert 29.0 < info.value.retry_after <= 30.0
    assert breaker.retry_after() == pytest.approx(info.value.retry_after, abs=0.5)
    assert called == []


def test_a_successful_trial_after_reset_timeout_closes_the_breaker(heard: Heard) -> None:
    """closed → open → half_open → closed, each transition reported exactly once."""
    breaker = memory_breaker()
    trip(breaker)
    time.sleep(0.06)
    assert breaker.call(lambda: "back") == "back"
    assert breaker.state == "closed"
    assert heard.edges() == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert [c.reason for c in heard.changes] == [
        "consecutive_failures", "reset_timeout_elapsed", "half_open_trials_succeeded"]
    assert all(c.breaker == "payments" and c.timestamp > 0 for c in heard.changes)


def test_a_failed_trial_reopens_the_breaker(heard: Heard) -> None:
    """The half-open trial's failure sends it back to open."""
    breaker = memory_breaker()
    trip(breaker)
    time.sleep(0.06)
    with pytest.raises(RemoteDown):
        breaker.call(boom)
    assert breaker.state == "open"
    assert heard.edges()[-1] == ("half_open", "open")


def test_half_open_admits_only_half_open_max_calls_concurrent_trials() -> None:
    """Eight threads race for two permits: exactly two trials run."""
    breaker = memory_breaker(half_open_max_calls=2)
    trip(breaker)
    time.sleep(0.06)
    started = threading.Barrier(8)
    release = threading.Event()
    ran, rejected = [], []

    def attempt() -> None:
        started.wait()
        try:
            breaker.call(lambda: (ran.append(1), release.wait(5)))
        except CircuitOpenError:
            rejected.append(1)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while len(ran) + len(rejected) < 8 and time.monotonic() < deadline:
        time.sleep(0.005)
    release.set()
    for thread in threads:
        thread.join()
    assert (len(ran), len(rejected)) == (2, 6)
    assert breaker.state == "closed"


def test_an_interrupted_trial_frees_its_permit_without_counting() -> None:
    """A KeyboardInterrupt in a trial neither closes nor reopens; the next call is a trial."""
    breaker = memory_breaker()
    trip(breaker)
    time.sleep(0.06)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        breaker.call(interrupted)
    assert breaker.state == "half_open"
    breaker.call(lambda: None)
    assert breaker.state == "closed"


def test_force_open_and_reset(heard: Heard) -> None:
    """force_open() rejects calls at once; reset() closes and clears the counts."""
    breaker = memory_breaker(reset_timeout=30.0)
    breaker.force_open()
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: None)
    breaker.reset()
    assert breaker.call(lambda: 1) == 1
    assert heard.edges() == [("closed", "open"), ("open", "closed")]
    assert [c.reason for c in heard.changes] == ["forced", "reset"]


def test_disabled_mode_always_passes_and_records_nothing() -> None:
    """In mode disabled failures never open the breaker."""
    breaker = memory_breaker()
    breaker.set_mode("disabled")
    for _ in range(10):
        with pytest.raises(RemoteDown):
            breaker.call(boom)
    assert (breaker.mode, breaker.state) == ("disabled", "closed")
    assert breaker.snapshot().consecutive_failures == 0


def test_forced_open_mode_always_rejects(heard: Heard) -> None:
    """Mode forced_open rejects every call until the mode changes, reporting the open."""
    breaker = memory_breaker()
    breaker.set_mode("forced_open")
    time.sleep(0.06)
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: None)
    assert heard.edges() == [("closed", "open")]
    assert heard.calls == [("payments", "rejected")]
    breaker.set_mode("normal")
    assert breaker.call(lambda: 1) == 1


def test_metrics_only_mode_never_rejects_but_still_transitions(heard: Heard) -> None:
    """Mode metrics_only opens on failures and reports it, yet every call runs."""
    breaker = memory_breaker()
    breaker.set_mode("metrics_only")
    for _ in range(4):
        with pytest.raises(RemoteDown):
            breaker.call(boom)
    assert breaker.state == "open"
    assert breaker.call(lambda: "ran") == "ran"
    assert heard.edges() == [("closed", "open")]


def test_set_mode_rejects_an_unknown_mode() -> None:
    """An unknown mode raises ValueError naming the field."""
    with pytest.raises(ValueError, match="^mode "):
        memory_breaker().set_mode("paused")


def test_the_call_listener_hears_each_outcome_once(heard: Heard) -> None:
    """success, failure and rejected are reported once per call."""
    breaker = memory_breaker(reset_timeout=30.0)
    breaker.call(lambda: None)
    trip(breaker)
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: None)
    assert [outcome for _, outcome in heard.calls] == [
        "success", "failure", "failure", "rejected"]


def test_a_raising_listener_never_breaks_the_call(heard: Heard) -> None:
    """Listeners that raise are reported as breaker_listener errors; the call's result stands."""
    def broken(*args: object) -> None:
        raise RuntimeError("listener bug")

    set_transition_listener(broken)
    set_call_listener(broken)
    breaker = memory_breaker()
    assert breaker.call(lambda: "ok") == "ok"
    for _ in range(2):
        with pytest.raises(RemoteDown):
            breaker.call(boom)
    assert breaker.state == "open"
    sinks = [sink for sink, _ in heard.errors]
    assert sinks == ["breaker_listener"] * 4  # three calls and one transition
    set_error_listener(broken)
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: None)


def test_snapshot_reports_counters() -> None:
    """snapshot() carries state, mode, generation, failures and the failure rate."""
    breaker = memory_breaker(failure_threshold=5, failure_rate_threshold=0.9, window_size=4,
                             minimum_calls=4)
    breaker.call(lambda: None)
    for _ in range(2):
        with pytest.raises(RemoteDown):
            breaker.call(boom)
    snap = breaker.snapshot()
    assert (snap.breaker, snap.state, snap.mode, snap.generation) == (
        "payments", "closed", "normal", 0)
    assert snap.consecutive_failures == 2
    assert snap.failure_rate == pytest.approx(2 / 3)
    assert (snap.retry_after, snap.half_open_permits_in_use) == (0.0, 0)


def test_breakers_register_by_name_and_the_latest_wins() -> None:
    """get_breaker(name) returns the breaker last built with that name."""
    first = memory_breaker("registry-a")
    assert get_breaker("registry-a") is first
    second = memory_breaker("registry-a")
    assert get_breaker("registry-a") is second
    assert second in all_breakers()
    assert get_breaker("registry-missing") is None


def test_a_pickled_breaker_comes_back_as_the_registered_one() -> None:
    """Unpickling in the same process returns the registered breaker of that configuration."""
    breaker = memory_breaker("pickled", exclude=(NotFound,))
    assert pickle.loads(pickle.dumps(breaker)) is breaker


@pytest.mark.parametrize("field_name, settings", [
    ("name", {"name": ""}),
    ("storage", {"storage": "disk"}),
    ("on_redis_error", {"on_redis_error": "ignore"}),
    ("exclude", {"exclude": ("NotFound",)}),
    ("failure_threshold", {"failure_threshold": 0}),
    ("reset_timeout", {"reset_timeout": -1}),
    ("half_open_max_calls", {"half_open_max_calls": 0}),
    ("failure_rate_threshold", {"failure_rate_threshold": 2}),
    ("redis_url", {"redis_url": ""}),
])
def test_bad_settings_raise_value_error_naming_the_field(
        field_name: str, settings: dict[str, Any]) -> None:
    """Each invalid constructor argument raises ValueError that starts with its name."""
    arguments: dict[str, Any] = {"name": "bad", "storage": "memory"}
    arguments.update(settings)
    with pytest.raises(ValueError, match=f"^{field_name} "):
        CircuitBreaker(**arguments)
