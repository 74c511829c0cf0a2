"""Helpers for users' own tests: assert on failure handling without a broker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .core import dispatch
from .core.events import BreakerChange, FailureEvent


@contextmanager
def capture_events() -> Iterator[list[FailureEvent | BreakerChange]]:
    """Collect every ``FailureEvent`` and ``BreakerChange`` of this process, in order.

    Works with eager tasks (``task.apply()``) as well as with an in-process worker::

        with capture_events() as events:
            charge_card.apply(args=(42,))
        assert [e.decision for e in events] == ["retry", "retry", "give_up"]
    """
    captured: list[FailureEvent | BreakerChange] = []
    dispatch.listeners.append(captured.append)
    try:
        yield captured
    finally:
        dispatch.listeners.remove(captured.append)
