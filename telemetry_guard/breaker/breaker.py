"""``CircuitBreaker``: wraps an outbound call; its state lives in Redis or in this process.

Also this process's breakers: the latest built under each name (``get_breaker``), and every
one alive, reset after ``fork()``.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar

from celery.exceptions import Ignore, Reject, Retry

from ..core.events import BreakerChange
from ..exceptions import CircuitOpenError
from .default_url import replace_default_redis_url
from .hooks import emit_call, emit_transition
from .memory import MemoryBreakerStore
from .redis_store import RedisBreakerStore
from .state import (
    FAILURE,
    IGNORED,
    SUCCESS,
    Admission,
    BreakerConfig,
    BreakerSnapshot,
    Transition,
)
from .store import BreakerStore

P = ParamSpec("P")
R = TypeVar("R")

STORAGES = ("redis", "memory")
ON_REDIS_ERROR = ("fail_open", "fail_closed")
REJECTED = "rejected"

#: Every breaker alive in this process, so a forked child can reset them all.
_live: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
_fork_hook_installed = False
_lock = threading.Lock()
#: The breaker ``get_breaker`` returns for each name: the latest built under it.
_breakers: dict[str, CircuitBreaker] = {}


def after_fork() -> None:
    """Reset every breaker's per-process state (client, cache, locks) in a forked child.

    Runs by itself after ``os.fork()``; calling it again (``worker_process_init``) is harmless.
    """
    for breaker in list(_live):
        breaker.after_fork()


def _track(breaker: CircuitBreaker) -> None:
    global _fork_hook_installed
    _live.add(breaker)
    if not _fork_hook_installed:
        os.register_at_fork(after_in_child=after_fork)
        _fork_hook_installed = True


def _exception_types(exclude: object) -> tuple[type[BaseException], ...]:
    items = (exclude,) if isinstance(exclude, type) else exclude
    if not isinstance(items, Iterable):
        raise ValueError(f"exclude must be exception classes, got {exclude!r}")
    types = tuple(items)
    for item in types:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ValueError(f"exclude must be exception classes, got {item!r}")
    return types


class CircuitBreaker:
    """Stops calling a failing dependency, then lets a few trial calls find out when it is back.

    Use it as ``breaker.call(fn, *args)``, as a decorator (``@breaker``) or as a context
    manager (``with breaker: ...``). Exceptions that are instances of ``exclude`` count as
    successes. An open breaker raises ``CircuitOpenError`` with ``retry_after`` seconds.
    With ``storage="redis"`` the state is shared by every process using the same Redis;
    ``redis_url=None`` means the URL ``set_default_redis_url`` holds (set by the
    TelemetryGuard of this process) and, until it is set, the per-process fallback that
    ``on_redis_error`` chooses, with a log line and an error report.
    """

    #: Exceptions that are control flow, not outcomes (Celery's ``Retry``, ``Ignore`` and
    #: ``Reject``, raised by a task inside a breaker): a call ending in one is not counted.
    neutral: tuple[type[BaseException], ...] = (Retry, Ignore, Reject)

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout: float = 60.0,
        half_open_max_calls: int = 1,
        storage: str = "redis",
        redis_url: str | None = None,
        exclude: type[BaseException] | Iterable[type[BaseException]] = (),
        *,
        failure_rate_threshold: float | None = None,
        window_size: int = 100,
        minimum_calls: int = 20,
        half_open_max_duration: float | None = None,
        permit_ttl: float | None = None,
        on_redis_error: str = "fail_open",
        key_prefix: str = "telemetry_guard:",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if storage not in STORAGES:
            raise ValueError(f"storage must be 'redis' or 'memory', got {storage!r}")
        if redis_url is not None and (not isinstance(redis_url, str) or not redis_url):
            raise ValueError(f"redis_url must be a URL string or None, got {redis_url!r}")
        if on_redis_error not in ON_REDIS_ERROR:
            raise ValueError(
                f"on_redis_error must be 'fail_open' or 'fail_closed', got {on_redis_error!r}")
        if not isinstance(key_prefix, str):
            raise ValueError(f"key_prefix must be a string, got {key_prefix!r}")
        self.name = name
        self.config = BreakerConfig(
            failure_threshold=failure_threshold, reset_timeout=reset_timeout,
            half_open_max_calls=half_open_max_calls,
            failure_rate_threshold=failure_rate_threshold, window_size=window_size,
            minimum_calls=minimum_calls, half_open_max_duration=half_open_max_duration,
            permit_ttl=permit_ttl)
        self.exclude = _exception_types(exclude)
        self.storage = storage
        self.redis_url = redis_url
        self.on_redis_error = on_redis_error
        self.key_prefix = key_prefix
        self._arguments: dict[str, Any] = dict(
            name=name, failure_threshold=failure_threshold, reset_timeout=reset_timeout,
            half_open_max_calls=half_open_max_calls, storage=storage, redis_url=redis_url,
            exclude=self.exclude, failure_rate_threshold=failure_rate_threshold,
            window_size=window_size, minimum_calls=minimum_calls,
            half_open_max_duration=half_open_max_duration, permit_ttl=permit_ttl,
            on_redis_error=on_redis_error, key_prefix=key_prefix)
        self._store: BreakerStore = (
            MemoryBreakerStore(name, self.config) if storage == "memory"
            else RedisBreakerStore(name, self.config, redis_url=redis_url,
                                   key_prefix=key_prefix, on_redis_error=on_redis_error))
        self._admissions: ContextVar[tuple[Admission, ...]] = ContextVar(
            f"telemetry_guard.breaker.{name}", default=())
        register(self)
        _track(self)

    # -- calling through the breaker ---------------------------------------------------------

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` if the breaker admits it; record how it went."""
        admission = self._admit()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._finish(admission, self._outcome_of(type(exc)))
            raise
        except BaseException:
            self._finish(admission, IGNORED)
            raise
        transitions = self._store.record(admission, SUCCESS)
        if transitions:
            self._emit(transitions)
        emit_call(self.name, SUCCESS)
        return result

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate ``fn`` so every call goes through the breaker."""
        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            return self.call(fn, *args, **kwargs)
        return guarded

    def __enter__(self) -> CircuitBreaker:
        admission = self._admit()
        self._admissions.set((*self._admissions.get(), admission))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        stack = self._admissions.get()
        if not stack:
            return False
        self._admissions.set(stack[:-1])
        if exc_type is None:
            outcome = SUCCESS
        elif issubclass(exc_type, Exception):
            outcome = self._outcome_of(exc_type)
        else:
            outcome = IGNORED
        self._finish(stack[-1], outcome)
        return False

    def _outcome_of(self, exc_type: type[BaseException]) -> str:
        """How an exception counts: neutral (control flow) ignored, excluded a success."""
        if self.neutral and issubclass(exc_type, self.neutral):
            return IGNORED
        return SUCCESS if issubclass(exc_type, self.exclude) else FAILURE

    def _admit(self) -> Admission:
        admission = self._store.admit()
        if admission.transitions:
            self._emit(admission.transitions)
        if not admission.admitted:
            emit_call(self.name, REJECTED)
            raise CircuitOpenError(self.name, admission.retry_after)
        return admission

    def _finish(self, admission: Admission, outcome: str) -> None:
        transitions = self._store.record(admission, outcome)
        if transitions:
            self._emit(transitions)
        if outcome != IGNORED:
            emit_call(self.name, outcome)

    def _emit(self, transitions: tuple[Transition, ...]) -> None:
        for t in transitions:
            emit_transition(BreakerChange(
                self.name, t.from_state, t.to_state,
                t.timestamp if t.timestamp is not None else time.time(), t.reason))

    # -- reading and commanding ---------------------------------------------------------------

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``, read from the store."""
        return self._store.snapshot().state

    @property
    def mode(self) -> str:
        """``"normal"``, ``"disabled"``, ``"forced_open"`` or ``"metrics_only"``."""
        return self._store.snapshot().mode

    def snapshot(self) -> BreakerSnapshot:
        """State, mode, generation and counters, read from the store."""
        return self._store.snapshot()

    def retry_after(self) -> float:
        """Seconds until the breaker admits a call again (0 when it would now)."""
        return self._store.snapshot().retry_after

    def force_open(self) -> None:
        """Open now (fleet-wide with Redis); trial calls start after ``reset_timeout``."""
        self._emit(self._store.force_open())

    def reset(self) -> None:
        """Close and clear every counter (fleet-wide with Redis); the mode is kept."""
        self._emit(self._store.reset())

    def set_mode(self, mode: str) -> None:
        """Set the mode fleet-wide: normal, disabled, forced_open or metrics_only."""
        self._emit(self._store.set_mode(mode))

    # -- process life -----------------------------------------------------------------------

    def after_fork(self) -> None:
        """Drop the Redis client, cached view and locks inherited from a parent process."""
        self._store.after_fork()

    def _default_redis_url_changed(self) -> None:
        if isinstance(self._store, RedisBreakerStore) and self.redis_url is None:
            self._store.disconnect()

    def __reduce__(self) -> tuple[Callable[[dict[str, Any]], CircuitBreaker], tuple[Any]]:
        return (_rebuild, (self._arguments,))

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} storage={self.storage!r}>"


def _rebuild(arguments: dict[str, Any]) -> CircuitBreaker:
    """Unpickle: the registered breaker of that name and configuration, or a new one."""
    existing = get_breaker(arguments["name"])
    if existing is not None and existing._arguments == arguments:
        return existing
    return CircuitBreaker(**arguments)


# -- this process's breakers by name ------------------------------------------------------------


def register(breaker: CircuitBreaker) -> None:
    """Make ``breaker`` the one ``get_breaker(breaker.name)`` returns (the latest wins)."""
    with _lock:
        _breakers[breaker.name] = breaker


def unregister(breaker: CircuitBreaker) -> bool:
    """Forget ``breaker`` if it is the one registered under its name; True when it was.

    Its state in Redis stays: a breaker built again under that name reads it.
    """
    with _lock:
        if _breakers.get(breaker.name) is breaker:
            del _breakers[breaker.name]
            return True
        return False


def get_breaker(name: str) -> CircuitBreaker | None:
    """The breaker last constructed with this name in this process, or None."""
    return _breakers.get(name)


def all_breakers() -> tuple[CircuitBreaker, ...]:
    """Every registered breaker, sorted by name."""
    with _lock:
        return tuple(_breakers[name] for name in sorted(_breakers))


def set_default_redis_url(url: str | None) -> None:
    """Set the Redis URL of this process's TelemetryGuard, used by breakers without their own.

    Breakers already connected through the previous default reconnect on their next call.
    """
    if replace_default_redis_url(url):
        for breaker in all_breakers():
            breaker._default_redis_url_changed()
