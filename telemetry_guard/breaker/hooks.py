"""Where breakers report what happens: three process-wide listeners, each a no-op by default.

The guard wires them to logs, metrics, spans and Sentry. A listener that raises
never affects the call: its exception goes to the error listener (sink
``"breaker_listener"``), and an error listener that raises is ignored.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.events import BreakerChange

TransitionListener = Callable[[BreakerChange], None]
CallListener = Callable[[str, str], None]
ErrorListener = Callable[[str, BaseException | None], None]

#: Sink name reported when the breaker's shared store (Redis) cannot be used.
STORE_SINK = "breaker_store"
#: Sink name reported when a transition or call listener raised.
LISTENER_SINK = "breaker_listener"


def _ignore_transition(change: BreakerChange) -> None:
    """Default transition listener: does nothing."""


def _ignore_call(breaker: str, outcome: str) -> None:
    """Default call listener: does nothing."""


def _ignore_error(sink: str, exc: BaseException | None) -> None:
    """Default error listener: does nothing."""


_transition_listener: TransitionListener = _ignore_transition
_call_listener: CallListener = _ignore_call
_error_listener: ErrorListener = _ignore_error


def set_transition_listener(fn: TransitionListener | None) -> TransitionListener | None:
    """Call ``fn(change)`` once per transition, in the process that made it; returns the old one."""
    global _transition_listener
    previous = _transition_listener
    _transition_listener = fn if fn is not None else _ignore_transition
    return None if previous is _ignore_transition else previous


def set_call_listener(fn: CallListener | None) -> CallListener | None:
    """Call ``fn(breaker, outcome)`` once per call (success/failure/rejected); returns the old."""
    global _call_listener
    previous = _call_listener
    _call_listener = fn if fn is not None else _ignore_call
    return None if previous is _ignore_call else previous


def set_error_listener(fn: ErrorListener | None) -> ErrorListener | None:
    """Call ``fn(sink, exc)`` when the store or a listener fails; returns the old one."""
    global _error_listener
    previous = _error_listener
    _error_listener = fn if fn is not None else _ignore_error
    return None if previous is _ignore_error else previous


def emit_transition(change: BreakerChange) -> None:
    """Hand one transition to the transition listener; never raises."""
    try:
        _transition_listener(change)
    except Exception as exc:
        report_error(LISTENER_SINK, exc)


def emit_call(breaker: str, outcome: str) -> None:
    """Hand one call's outcome to the call listener; never raises."""
    try:
        _call_listener(breaker, outcome)
    except Exception as exc:
        report_error(LISTENER_SINK, exc)


def report_error(sink: str, exc: BaseException | None) -> None:
    """Hand a failure to the error listener; never raises."""
    try:
        _error_listener(sink, exc)
    except Exception:
        pass
