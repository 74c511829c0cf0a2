"""GuardedTask: run → classify → decide retry → one FailureEvent for every sink."""

from __future__ import annotations

import pickle
import random
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import structlog
from celery import Task
from celery.app.autoretry import add_autoretry_behaviour
from celery.exceptions import Ignore, Reject, Retry

from ..breaker import CircuitBreaker, get_breaker
from ..core.classify import Severity
from ..core.pipeline import decide
from ..core.policy import RetryPolicy
from ..core.redact import exception_message
from ..exceptions import CircuitOpenError, UnpicklableTaskError
from . import log_context
from .callbacks import outcome_for
from .celery_retry import (
    UNBOUNDED_RETRIES,
    explicit_celery_retry_options,
    gave_up_in_celery_retry,
)
from .task_guard import TaskGuard, guard_of

_PASS_THROUGH = (Retry, Ignore, Reject)
#: Give-up reasons after which the task's ``fallback`` gives its result instead.
_FALLBACK_REASONS = ("max_retries_exceeded", "retry_budget_exhausted")


class GuardedTask(Task):  # type: ignore[misc]
    """Celery task base class that reports every failure and retries by policy.

    Task options (``@app.task(base=GuardedTask, ...)``): ``retry_policy``,
    ``severity`` (overrides the classifier), ``breaker``, ``fallback``, ``routes``.
    Celery's own retry options (``autoretry_for``, ``max_retries``, ``retry_backoff``, ...)
    become the policy when ``retry_policy`` is not set; setting both is a ``TypeError``.
    """

    #: Reports a child lost mid-task that Celery requeues (no signal tells it).
    Request = "telemetry_guard.integration.request:GuardedRequest"
    retry_policy: RetryPolicy | None = None
    severity: Severity | str | None = None
    breaker: Any = None
    fallback: Callable[..., Any] | None = None
    routes: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        celery_options = explicit_celery_retry_options(cls, GuardedTask)
        if celery_options and getattr(cls, "retry_policy", None) is not None:
            raise TypeError(
                f"task {cls.__dict__.get('name') or cls.__name__!r} sets both retry_policy and "
                f"Celery's retry options ({', '.join(celery_options)}); give one: Celery's "
                "options alone become the task's retry policy")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Celery calls ``task.run`` and keeps its own ``Task.__call__`` protocol; the guard
        # wraps the body, outside Celery's own autoretry wrapper (made here, so that
        # Celery's retries run as Celery runs them and the guard sees them give up).
        add_autoretry_behaviour(self)
        if not hasattr(self, "_orig_run"):
            self._orig_run = self.run
        self.run = GuardedRun(self, self.run)

    def _on_exception(self, guard: TaskGuard, exc: Exception, args: Any, kwargs: Any,
                      elapsed: float) -> Any:
        """Classify, decide, tell every sink once; say whether to retry, fall back or re-raise.

        Returns the fallback's result, ``_RERAISE``, or a ``_Raise`` of what to raise.
        """
        request = self.request
        policy = guard.policy_for(self)
        max_retries = None if policy.max_retries >= UNBOUNDED_RETRIES else policy.max_retries
        budget = guard.retry_budget
        decision, reason, delay = decide(
            policy, exc, request.retries or 0, retries_used_up=gave_up_in_celery_retry(exc),
            budget_allows=None if budget is None else partial(budget.withdraw, self.name))
        if delay is not None:
            delay = guard.cap_countdown(self.name, delay)
        falls_back = self.fallback is not None and reason in _FALLBACK_REASONS
        event = guard.events.build(
            self, exc, args=args, kwargs=kwargs, request=request, decision=decision,
            delay=delay, reason=reason, max_retries=max_retries, falls_back=falls_back)
        guard.record(event)
        if decision == "retry":
            guard.runtime(self.name, "retry").observe(elapsed)
            return _Raise(self.retry(exc=transportable(exc, event.traceback), countdown=delay,
                                     max_retries=max_retries, throw=False))
        guard.runtime(self.name, "failure").observe(elapsed)
        if falls_back:
            return self._fallback()(*args, **kwargs)
        replacement = outcome_for(exc)
        return _RERAISE if replacement is exc else _Raise(replacement)

    def _fallback(self) -> Callable[..., Any]:
        """The ``fallback`` option as given (a function set as a task option is not bound)."""
        return type(self).fallback  # type: ignore[return-value]

    def _on_breaker_open(self, guard: TaskGuard, exc: CircuitOpenError, args: Any,
                         kwargs: Any) -> Any:
        """The breaker is open: fall back, or come back when it half-opens (not a retry)."""
        if self.fallback is not None:
            return self._fallback()(*args, **kwargs)
        request = self.request
        waited = _seconds(getattr(request, BREAKER_WAIT_HEADER, None))
        delay = exc.retry_after + random.uniform(0.0, max(1.0, 0.1 * exc.retry_after))
        guard.mark_attempt_handled(request)  # a wait for the breaker, not a failed attempt
        if waited + delay > guard.settings.breaker_max_wait:
            guard.record(guard.events.build(
                self, exc, args=args, kwargs=kwargs, request=request,
                decision="give_up", reason="breaker_open_too_long"))
            raise exc
        guard.log.info("task.breaker_wait", task_name=self.name, task_id=request.id,
                       breaker=exc.breaker, delay_s=round(delay, 3), waited_s=round(waited, 3))
        headers = dict(getattr(request, "headers", None) or {})
        headers[BREAKER_WAIT_HEADER] = waited + delay
        self.signature_from_request(
            request, args, kwargs, countdown=delay, retries=request.retries or 0,
            headers=headers).apply_async()
        raise Retry(exc=transportable(exc, ""), when=delay)


class GuardedRun:
    """``task.run`` of a GuardedTask: the body under the guard (span, breaker, policy, one
    event per failed attempt). Its signature and attributes are the body's."""

    __slots__ = ("task", "__wrapped__")

    def __init__(self, task: GuardedTask, body: Callable[..., Any]) -> None:
        self.task = task
        self.__wrapped__ = body

    def __getattr__(self, name: str) -> Any:
        """Transparent: ``__name__``, ``__code__``, ... are the wrapped function's."""
        if name in GuardedRun.__slots__:  # not set yet (a copy being made)
            raise AttributeError(name)
        return getattr(self.__wrapped__, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Left out of the stacks Sentry (and pytest) show: the task's own frames come first,
        # so Sentry groups a task's errors the same with or without GuardedTask.
        # Short on purpose: on each failure billiard copies every frame of the traceback,
        # this one included, with a position per instruction and inline cache of its code;
        # past a few thousand positions the copy, and its unpickling in the main process,
        # start the garbage collector on every failure. Hence one bare ``except`` (the
        # attempt reads the exception itself), no ``finally`` (its body would be compiled
        # twice: the attempt ends in ``failed`` and ``succeeded``), and no branch.
        __tracebackhide__ = True  # noqa: F841
        attempt = _begin(self)
        try:
            result = attempt.run(*args, **kwargs)
        except:  # noqa: E722 - BaseException too: the attempt ends, then says what to do
            if attempt.failed(args, kwargs):
                raise
            return attempt.outcome()
        attempt.succeeded()
        return result


def _begin(run: GuardedRun) -> _Attempt | _PlainCall:
    """The attempt now starting; a plain call when called directly or the app has no guard."""
    task = run.task
    request = task.request
    if request.called_directly:
        return _PlainCall(run.__wrapped__)
    guard = _guard_of(task)
    if guard is None:
        return _PlainCall(run.__wrapped__)
    return _Attempt(task, guard, request, run.__wrapped__)


class _PlainCall:
    """A GuardedTask's body run as a plain call: nothing observed, every exception raised."""

    __slots__ = ("run",)

    def __init__(self, body: Callable[..., Any]) -> None:
        self.run = body

    def failed(self, args: Any, kwargs: Any) -> bool:
        return True

    def outcome(self) -> Any:  # never called: every failure is raised
        raise AssertionError("a plain call has no outcome")

    def succeeded(self) -> None:
        pass


class _Attempt:
    """One guarded run of a task: its guard, span and start time."""

    __slots__ = ("task", "guard", "request", "run", "span", "span_ids", "started", "_outcome")

    def __init__(self, task: GuardedTask, guard: TaskGuard, request: Any,
                 body: Callable[..., Any]) -> None:
        self.task, self.guard, self.request = task, guard, request
        #: The body, called through the task's breaker when it has one.
        self.run = body if task.breaker is None else partial(
            resolve_breaker(task.breaker).call, body)
        if guard.retry_budget is not None and not request.retries:
            guard.retry_budget.deposit(task.name)
        span = self.span = guard.start_span(task, request)
        # The guard's task_prerun receiver leaves a GuardedTask's log context to its run.
        self.span_ids = log_context.bind_run(request.id, task.name,
                                             None if span is None else span.span)
        self.started = time.perf_counter()

    def failed(self, args: Any, kwargs: Any) -> bool:
        """Handle the exception being raised; True when it is to be raised as it is, else
        :meth:`outcome` gives what the run returns or raises instead. The attempt has ended
        when it returns or raises."""
        exc = sys.exc_info()[1]
        task, guard = self.task, self.guard
        try:
            if not isinstance(exc, Exception):  # SystemExit, KeyboardInterrupt, ...
                return True
            if isinstance(exc, _PASS_THROUGH):
                guard.runtime(task.name, "retry").observe(time.perf_counter() - self.started)
                if isinstance(exc, Retry):  # Celery's autoretry or a manual self.retry()
                    guard.record_celery_retry(task, exc, request=self.request, args=args,
                                              kwargs=kwargs)
                return True
            if isinstance(exc, CircuitOpenError):
                self._outcome = task._on_breaker_open(guard, exc, args, kwargs)
            else:
                self._outcome = task._on_exception(guard, exc, args, kwargs,
                                                   time.perf_counter() - self.started)
            return self._outcome is _RERAISE
        finally:
            self.end()

    def outcome(self) -> Any:
        """The fallback's value, or raise the replacement (Celery's ``Retry``, say)."""
        outcome = self._outcome
        if isinstance(outcome, _Raise):
            raise outcome.exception from None
        return outcome

    def end(self) -> None:
        """End the span and restore the log context, however the run ended."""
        if self.span is not None:
            self.span.end()
        if self.span_ids:
            log_context.restore(self.span_ids)

    def succeeded(self) -> None:
        """Time a successful run, and end the attempt."""
        try:
            self.guard.runtime(self.task.name, "success").observe(
                time.perf_counter() - self.started)
        finally:
            self.end()


_RERAISE = object()


class _Raise:
    """What ``_on_exception`` asks ``GuardedRun`` to raise instead of the original one."""

    __slots__ = ("exception",)

    def __init__(self, exception: BaseException) -> None:
        self.exception = exception


#: Message header with the seconds a task already spent waiting for an open breaker.
BREAKER_WAIT_HEADER = "telemetry_guard_breaker_waited"


def resolve_breaker(option: Any) -> CircuitBreaker:
    """The task option ``breaker``: an instance, or the name of a registered breaker."""
    if isinstance(option, CircuitBreaker):
        return option
    found = get_breaker(str(option))
    return found if found is not None else CircuitBreaker(str(option))


def _seconds(value: Any) -> float:
    try:
        return max(0.0, float(value)) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def transportable(exc: BaseException, traceback_text: str) -> BaseException:
    """``exc`` when it survives pickling and printing, else a picklable stand-in."""
    try:
        repr(exc)
        str(exc)
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return UnpicklableTaskError(type(exc).__name__, exception_message(exc), traceback_text)


def _guard_of(task: Task) -> TaskGuard | None:
    """The app's guard; None (said once per task) when ``TelemetryGuard(app)`` was never made."""
    guard = guard_of(task.app)
    if guard is None and task.name not in _UNGUARDED_WARNED:
        _UNGUARDED_WARNED.add(task.name)
        structlog.get_logger("telemetry_guard").warning(
            "task.unguarded", task_name=task.name,
            fix="call TelemetryGuard(app) where the Celery app is made")
    return guard


_UNGUARDED_WARNED: set[str] = set()
