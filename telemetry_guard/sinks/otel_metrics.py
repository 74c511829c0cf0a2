"""The metric families over the OpenTelemetry metrics API (never the SDK).

Each family has the Prometheus family's surface (``.labels(...).inc(n)`` /
``.observe(v)``), so callers do not know which backend they write to. Instruments come from
the global MeterProvider (``metrics.get_meter``); before the application sets one they are
the API's proxy instruments, which start recording into the provider once it is set (in a
prefork child: in ``worker_process_init``). The guard never sets a provider.

Instrument names are chosen so that a Prometheus fed by OTLP shows the names of the
Prometheus families: a monotonic counter named ``telemetry_guard_task_failures`` becomes
``telemetry_guard_task_failures_total``; the histogram ``telemetry_guard_task_runtime_seconds``
with unit ``s`` keeps its name (the unit's suffix is already there).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from .breaker_states import BreakerStateCollector, breaker_state_values

METER_NAME = "telemetry_guard"
#: The unit of the runtime histogram (UCUM): Prometheus' translation reads it as ``seconds``.
SECONDS = "s"

log = logging.getLogger(__name__)


class _Dropped:
    """Logs the first measurement the OpenTelemetry side could not take, then stays quiet."""

    def __init__(self) -> None:
        self.reported = False

    def __call__(self, name: str, exc: BaseException) -> None:
        if not self.reported:
            self.reported = True
            log.warning("telemetry_guard: OpenTelemetry metric %s dropped a measurement: %r",
                        name, exc)


_dropped = _Dropped()


class OtelCounterChild:
    """One label combination of a counter: ``inc(amount)`` adds to the OTel counter."""

    __slots__ = ("_add", "_attributes", "_name")

    def __init__(self, add: Callable[..., None], attributes: dict[str, str], name: str) -> None:
        self._add = add
        self._attributes = attributes
        self._name = name

    def inc(self, amount: float = 1) -> None:
        """Add ``amount``; never raises into the caller (telemetry fails open)."""
        try:
            self._add(amount, self._attributes)
        except Exception as exc:
            _dropped(self._name, exc)


class OtelHistogramChild:
    """One label combination of a histogram: ``observe(value)`` records into it."""

    __slots__ = ("_record", "_attributes", "_name")

    def __init__(self, record: Callable[..., None], attributes: dict[str, str],
                 name: str) -> None:
        self._record = record
        self._attributes = attributes
        self._name = name

    def observe(self, amount: float) -> None:
        """Record ``amount``; never raises into the caller (telemetry fails open)."""
        try:
            self._record(amount, self._attributes)
        except Exception as exc:
            _dropped(self._name, exc)


class OtelFamily:
    """An OTel instrument behind the Prometheus family surface: ``labels(...)`` returns a
    child, cached per label tuple, whose attributes dict is built once."""

    def __init__(self, instrument: Any, labelnames: Sequence[str], kind: str) -> None:
        self.instrument = instrument
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        if kind == "histogram":
            self._child_type: Any = OtelHistogramChild
            self._method = instrument.record
        else:
            self._child_type = OtelCounterChild
            self._method = instrument.add

    def labels(self, *values: Any, **labelkwargs: Any) -> Any:
        """The child for these label values (positional or by name, as in prometheus_client)."""
        if values and labelkwargs:
            raise ValueError("can't pass both *args and **kwargs")
        if labelkwargs:
            if sorted(labelkwargs) != sorted(self.labelnames):
                raise ValueError("incorrect label names")
            values = tuple(labelkwargs[name] for name in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError("incorrect label count")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    attributes = dict(zip(self.labelnames, key, strict=True))
                    child = self._child_type(self._method, attributes,
                                             getattr(self.instrument, "name", ""))
                    self._children[key] = child
        return child


class FanOutChild:
    """One label combination written to several backends."""

    __slots__ = ("_children",)

    def __init__(self, children: tuple[Any, ...]) -> None:
        self._children = children

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` in every backend."""
        for child in self._children:
            child.inc(amount)

    def observe(self, amount: float) -> None:
        """Record ``amount`` in every backend."""
        for child in self._children:
            child.observe(amount)


class FanOutFamily:
    """A family written to Prometheus and OpenTelemetry alike (``telemetry_guard_metrics="both"``).

    ``prometheus`` and ``otel`` are the two families; other attributes (``collect``, ...)
    are the Prometheus family's.
    """

    def __init__(self, prometheus: Any, otel: OtelFamily) -> None:
        self.prometheus = prometheus
        self.otel = otel
        self._children: dict[tuple[Any, ...], FanOutChild] = {}

    def labels(self, *values: Any, **labelkwargs: Any) -> FanOutChild:
        """The child for these label values, writing to both families."""
        key = values + tuple(sorted(labelkwargs.items()))
        child = self._children.get(key)
        if child is None:
            child = FanOutChild((self.prometheus.labels(*values, **labelkwargs),
                                 self.otel.labels(*values, **labelkwargs)))
            child = self._children.setdefault(key, child)
        return child

    def __getattr__(self, name: str) -> Any:
        return getattr(self.prometheus, name)


def observe_breaker_states(options: CallbackOptions) -> Iterable[Observation]:
    """``telemetry_guard_breaker_state``: read at export time as the Prometheus collector
    reads it at scrape time (same ``breaker`` label bound). Never raises."""
    try:
        values = breaker_state_values(BreakerStateCollector.label)
    except Exception as exc:
        _dropped("telemetry_guard_breaker_state", exc)
        return []
    return [Observation(value, {"breaker": shown, "state": state})
            for shown, row in values.items() for state, value in row.items()]


def _version() -> str:
    try:
        from .. import __version__
        return str(__version__)
    except Exception:
        return ""


def otel_families(specs: Iterable[Any], meter_provider: Any = None) -> dict[str, OtelFamily]:
    """One OTel family per spec, from ``meter_provider`` (default: the global one), plus the
    breaker-state observable gauge. Keys are the spec attributes."""
    meter = metrics.get_meter(METER_NAME, _version(), meter_provider=meter_provider)
    families: dict[str, OtelFamily] = {}
    for spec in specs:
        name = f"{METER_NAME}_{spec.name}"
        if spec.kind == "histogram":
            instrument = meter.create_histogram(
                name, unit=SECONDS, description=spec.documentation,
                explicit_bucket_boundaries_advisory=[b for b in spec.buckets
                                                     if b != float("inf")])
        else:
            instrument = meter.create_counter(name, description=spec.documentation)
        families[spec.attribute] = OtelFamily(instrument, spec.labels, spec.kind)
    meter.create_observable_gauge(
        f"{METER_NAME}_breaker_state", callbacks=[observe_breaker_states],
        description="1 on the breaker's current state, 0 on the others.")
    _watch_forks()
    return families


# -- prefork: a provider set before the fork is shared with every child ---------------------
_provider_at_fork: Any = None
_fork_watch_installed = False


def _remember_provider() -> None:
    global _provider_at_fork
    _provider_at_fork = metrics.get_meter_provider()


def _watch_forks() -> None:
    global _fork_watch_installed
    if not _fork_watch_installed and hasattr(os, "register_at_fork"):
        _fork_watch_installed = True
        os.register_at_fork(before=_remember_provider)


def provider_inherited_from_parent() -> bool:
    """In a forked child: whether the global MeterProvider is a real one the parent set
    before forking (its readers would export the parent's counts again from here)."""
    provider = metrics.get_meter_provider()
    return (_provider_at_fork is not None and provider is _provider_at_fork
            and hasattr(provider, "force_flush"))


def flush_meter_provider(timeout: float) -> None:
    """Export what the global MeterProvider holds now (a child about to exit)."""
    force_flush = getattr(metrics.get_meter_provider(), "force_flush", None)
    if force_flush is not None:
        force_flush(int(timeout * 1000))
