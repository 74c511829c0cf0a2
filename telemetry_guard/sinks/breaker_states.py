"""``telemetry_guard_breaker_state``: every breaker's state, read when metrics are collected
(a Prometheus scrape, an OpenTelemetry export), with the ``breaker`` label bounded."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily

OTHER = "other"


class LabelBound:
    """Admits at most ``limit`` distinct values; later newcomers become ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self.limit:
            return OTHER
        self._seen.add(value)
        return value


BREAKER_STATES = ("closed", "open", "half_open")


class BreakerStateCollector:
    """``telemetry_guard_breaker_state``, read from each breaker's shared state at scrape time.

    Every process that exposes metrics reads the same Redis state, so all scrapes agree. All
    breakers are read in one round trip per Redis (``breaker.states``). The ``breaker`` label
    goes through ``label`` (the guard's bound): breakers past the bound share the value
    ``other``, which is 1 on each state at least one of them is in. A breaker whose stored
    state is invalid is 0 in every state.
    """

    _installed: set[int] = set()
    #: The bound of the ``breaker`` label; the guard sets its own.
    label: LabelBound | None = None

    def collect(self) -> Any:
        family = GaugeMetricFamily(
            "telemetry_guard_breaker_state", "1 on the breaker's current state, 0 on the others.",
            labels=["breaker", "state"])
        for shown, row in breaker_state_values(type(self).label).items():
            for name, value in row.items():
                family.add_metric([shown, name], value)
        yield family

    def describe(self) -> list[Any]:
        return []

    @classmethod
    def install(cls, registry: Any = None) -> None:
        """Register once into ``registry`` (default: the global one)."""
        registry = REGISTRY if registry is None else registry
        if id(registry) not in cls._installed:
            cls._installed.add(id(registry))
            registry.register(cls())


def breaker_state_values(label: LabelBound | None) -> dict[str, dict[str, float]]:
    """Breaker label value -> state -> 1.0 or 0.0, every breaker of this process read in one
    round trip per Redis; ``label`` bounds the breaker names (see ``BreakerStateCollector``).
    An unreadable store gives no rows."""
    from ..breaker import all_breakers, states

    values: dict[str, dict[str, float]] = {}
    try:
        current = states(all_breakers())
    except Exception:
        current = {}
    for name, state in current.items():
        shown = label(name) if label is not None else name
        row = values.get(shown)
        if row is None:
            row = values[shown] = dict.fromkeys(BREAKER_STATES, 0.0)
        if state in row:
            row[state] = 1.0
    return values
