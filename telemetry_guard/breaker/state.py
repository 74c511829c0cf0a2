"""The circuit breaker's state machine: pure logic, no clock, no lock, no I/O.

    closed ──(failure_threshold consecutive failures, or failure rate)──▶ open
    open ──(reset_timeout elapsed, on the next call)──▶ half_open
    half_open ──(half_open_max_calls trial successes)──▶ closed
    half_open ──(a trial fails, or half_open_max_duration elapsed)──▶ open
    any ──reset()──▶ closed        any ──force_open()──▶ open

Every transition increments ``generation``. An outcome counts only for the
generation it was admitted in; a half-open success counts only while its permit
(a lease that expires after ``permit_ttl``) is still held. The Lua script
``stores/lua/breaker.lua`` implements the same rules; times here are seconds on any
monotonic clock the caller passes as ``now``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"
STATES: Final = (CLOSED, OPEN, HALF_OPEN)

NORMAL: Final = "normal"
DISABLED: Final = "disabled"
FORCED_OPEN: Final = "forced_open"
METRICS_ONLY: Final = "metrics_only"
MODES: Final = (NORMAL, DISABLED, FORCED_OPEN, METRICS_ONLY)

SUCCESS: Final = "success"
FAILURE: Final = "failure"
#: An outcome that neither succeeds nor fails (the call was interrupted): frees its permit.
IGNORED: Final = "ignored"
OUTCOMES: Final = (SUCCESS, FAILURE, IGNORED)

#: The edges calls and time may take; ``reset()``, ``force_open()`` and modes may jump.
EDGES: Final = frozenset({(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED),
                          (HALF_OPEN, OPEN)})


def _positive_int(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
    return value


def _positive_seconds(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{field} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class BreakerConfig:
    """A breaker's thresholds, validated; a bad value raises ValueError naming the field.

    ``half_open_max_duration`` defaults to twice ``reset_timeout`` and ``permit_ttl``
    to ``reset_timeout``. ``minimum_calls`` above ``window_size`` means a full window.
    """

    failure_threshold: int = 5
    reset_timeout: float = 60.0
    half_open_max_calls: int = 1
    failure_rate_threshold: float | None = None
    window_size: int = 100
    minimum_calls: int = 20
    half_open_max_duration: float | None = None
    permit_ttl: float | None = None

    def __post_init__(self) -> None:
        _positive_int("failure_threshold", self.failure_threshold)
        reset_timeout = _positive_seconds("reset_timeout", self.reset_timeout)
        _positive_int("half_open_max_calls", self.half_open_max_calls)
        rate = self.failure_rate_threshold
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                                 or not 0.0 < rate <= 1.0):
            raise ValueError(f"failure_rate_threshold must be in (0, 1] or None, got {rate!r}")
        _positive_int("window_size", self.window_size)
        _positive_int("minimum_calls", self.minimum_calls)
        set_ = object.__setattr__
        set_(self, "reset_timeout", reset_timeout)
        if rate is not None:
            set_(self, "failure_rate_threshold", float(rate))
        set_(self, "half_open_max_duration", 2.0 * reset_timeout
             if self.half_open_max_duration is None
             else _positive_seconds("half_open_max_duration", self.half_open_max_duration))
        set_(self, "permit_ttl", reset_timeout if self.permit_ttl is None
             else _positive_seconds("permit_ttl", self.permit_ttl))

    @property
    def rate_minimum(self) -> int:
        """Calls the window must hold before the failure rate may trip the breaker."""
        return min(self.minimum_calls, self.window_size)


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change; ``timestamp`` is wall-clock seconds when the store knows it."""

    from_state: str
    to_state: str
    reason: str
    timestamp: float | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to "may this call run?", and what its outcome must be recorded against."""

    admitted: bool
    generation: int
    permit: str | None = None
    retry_after: float = 0.0
    transitions: tuple[Transition, ...] = ()
    #: False when the outcome must not be recorded (mode ``disabled``).
    record: bool = True
    #: Which store decided: ``"memory"`` (this process) or ``"redis"`` (shared).
    origin: str = "memory"


@dataclass(frozen=True)
class BreakerSnapshot:
    """A breaker as its store sees it right now, for a CLI or the state gauge."""

    breaker: str
    state: str
    mode: str
    generation: int
    consecutive_failures: int
    failure_rate: float | None
    retry_after: float
    half_open_permits_in_use: int


#: Admission in mode ``disabled``: the call runs and nothing is recorded.
PASS_THROUGH: Final = Admission(True, -1, record=False)


class BreakerMachine:
    """The state of one breaker and the rules that change it; callers serialise access."""

    __slots__ = ("config", "state", "mode", "generation", "consecutive_failures", "opened_at",
                 "half_open_since", "half_open_successes", "permits", "window",
                 "window_failures", "fast_admission", "_permit_seq", "_rate", "_half_open_max",
                 "_permit_ttl")

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.state: str = CLOSED
        self.mode: str = NORMAL
        self.generation = 0
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self.half_open_since = 0.0
        self.half_open_successes = 0
        #: Half-open trial permits held: id -> lease expiry.
        self.permits: dict[str, float] = {}
        #: The last ``window_size`` outcomes (1 = failure), kept only with a rate threshold.
        self.window: deque[int] | None = (
            deque(maxlen=config.window_size) if config.failure_rate_threshold is not None
            else None)
        self.window_failures = 0
        #: The admission every call gets while closed in mode normal/metrics_only, else None.
        self.fast_admission: Admission | None = Admission(True, 0)
        self._permit_seq = 0
        self._rate = config.failure_rate_threshold or 0.0
        self._half_open_max = float(config.half_open_max_duration or 0.0)
        self._permit_ttl = float(config.permit_ttl or 0.0)

    # -- calls ---------------------------------------------------------------------------

    def admit(self, now: float) -> Admission:
        """Decide whether a call may run now; may move open → half_open or half_open → open."""
        if self.fast_admission is not None:
            return self.fast_admission
        mode = self.mode
        if mode == DISABLED:
            return PASS_THROUGH
        if mode == FORCED_OPEN:
            return Admission(False, self.generation, retry_after=self.config.reset_timeout)
        transitions = self._tick(now)
        if self.state == HALF_OPEN:
            if len(self.permits) + self.half_open_successes < self.config.half_open_max_calls:
                self._permit_seq += 1
                permit = f"{self.generation}:{self._permit_seq}"
                self.permits[permit] = now + self._permit_ttl
                return Admission(True, self.generation, permit, transitions=transitions)
        admitted = mode == METRICS_ONLY
        return Admission(admitted, self.generation, retry_after=self.retry_after(now),
                         transitions=transitions)

    def record(self, now: float, outcome: str, generation: int,
               permit: str | None = None) -> tuple[Transition, ...]:
        """Count a call's outcome against the generation it was admitted in."""
        if self.mode == DISABLED:
            return ()
        transitions = self._tick(now) if self.state != CLOSED else ()
        if generation != self.generation:
            return transitions
        if self.state == CLOSED:
            if outcome == IGNORED:
                return transitions
            failed = outcome == FAILURE
            if failed:
                self.consecutive_failures += 1
            elif self.consecutive_failures:
                self.consecutive_failures = 0
            window = self.window
            if window is not None:
                if len(window) == window.maxlen:
                    self.window_failures -= window[0]
                window.append(1 if failed else 0)
                self.window_failures += failed
            if failed and self.consecutive_failures >= self.config.failure_threshold:
                return transitions + self._go(OPEN, "consecutive_failures", now)
            if window is not None and len(window) >= self.config.rate_minimum \
                    and self.window_failures >= self._rate * len(window):
                return transitions + self._go(OPEN, "failure_rate", now)
            return transitions
        if self.state == HALF_OPEN and permit is not None:
            held = self.permits.pop(permit, None) is not None
            if outcome == FAILURE:
                return transitions + self._go(OPEN, "half_open_trial_failed", now)
            if outcome == SUCCESS and held:
                self.half_open_successes += 1
                if self.half_open_successes >= self.config.half_open_max_calls:
                    return transitions + self._go(CLOSED, "half_open_trials_succeeded", now)
        return transitions

    # -- operator commands -----------------------------------------------------------------

    def force_open(self, now: float) -> tuple[Transition, ...]:
        """Open now; half-open trials start after ``reset_timeout`` as usual."""
        if self.state == OPEN:
            self.opened_at = now
            return ()
        return self._go(OPEN, "forced", now)

    def reset(self, now: float) -> tuple[Transition, ...]:
        """Close and clear every counter (the mode is kept)."""
        if self.state != CLOSED:
            return self._go(CLOSED, "reset", now)
        self._clear_counts()
        return ()

    def set_mode(self, mode: str, now: float) -> tuple[Transition, ...]:
        """Switch mode; ``forced_open`` opens the breaker, ``disabled`` closes and clears it."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        transitions: tuple[Transition, ...] = ()
        if mode == FORCED_OPEN and self.state != OPEN:
            transitions = self._go(OPEN, "mode_forced_open", now)
        elif mode == DISABLED:
            transitions = self._go(CLOSED, "mode_disabled", now) if self.state != CLOSED else ()
            self._clear_counts()
        self._refresh_fast_admission()
        return transitions

    # -- reading -------------------------------------------------------------------------

    def retry_after(self, now: float) -> float:
        """Seconds until a call may be admitted again (0 when it may be now)."""
        if self.mode == FORCED_OPEN:
            return self.config.reset_timeout
        if self.state == OPEN:
            return max(0.0, self.opened_at + self.config.reset_timeout - now)
        if self.state == HALF_OPEN:
            due = self.half_open_since + self._half_open_max
            live = [expiry for expiry in self.permits.values() if expiry > now]
            if len(live) + self.half_open_successes >= self.config.half_open_max_calls:
                due = min([due, *live])
                return max(0.0, due - now)
        return 0.0

    def snapshot(self, name: str, now: float) -> BreakerSnapshot:
        """The current view, without advancing time-based transitions."""
        window = self.window
        rate = self.window_failures / len(window) if window else None
        return BreakerSnapshot(
            breaker=name, state=self.state, mode=self.mode, generation=self.generation,
            consecutive_failures=self.consecutive_failures, failure_rate=rate,
            retry_after=self.retry_after(now),
            half_open_permits_in_use=sum(1 for e in self.permits.values() if e > now)
            if self.state == HALF_OPEN else 0)

    # -- internals -----------------------------------------------------------------------

    def _tick(self, now: float) -> tuple[Transition, ...]:
        """Apply the transitions that time alone causes, and drop expired permits."""
        if self.mode in (FORCED_OPEN, DISABLED):
            return ()
        transitions: tuple[Transition, ...] = ()
        if self.state == OPEN and now >= self.opened_at + self.config.reset_timeout:
            transitions = self._go(HALF_OPEN, "reset_timeout_elapsed", now)
        if self.state == HALF_OPEN:
            if now >= self.half_open_since + self._half_open_max:
                return transitions + self._go(OPEN, "half_open_timed_out", now)
            if self.permits:
                for permit in [p for p, expiry in self.permits.items() if expiry <= now]:
                    del self.permits[permit]
        return transitions

    def _go(self, to_state: str, reason: str, now: float) -> tuple[Transition, ...]:
        transition = Transition(self.state, to_state, reason)
        self.state = to_state
        self.generation += 1
        self._clear_counts()
        if to_state == OPEN:
            self.opened_at = now
        elif to_state == HALF_OPEN:
            self.half_open_since = now
        self._refresh_fast_admission()
        return (transition,)

    def _clear_counts(self) -> None:
        self.consecutive_failures = 0
        self.half_open_successes = 0
        self.permits.clear()
        if self.window is not None:
            self.window.clear()
        self.window_failures = 0

    def _refresh_fast_admission(self) -> None:
        self.fast_admission = (
            Admission(True, self.generation)
            if self.state == CLOSED and self.mode in (NORMAL, METRICS_ONLY) else None)
