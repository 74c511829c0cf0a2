"""Celery's own retry options read as a ``RetryPolicy``, and what a retry told Celery.

A task that sets ``autoretry_for``, ``max_retries``, ``retry_backoff`` and friends keeps
exactly that behaviour under the guard: for a ``GuardedTask`` they become its policy
(attempts = ``max_retries`` + 1); for any task the guard reads each attempt's outcome
from Celery's ``Retry`` and from ``Task.retry`` giving up.
"""

from __future__ import annotations

import datetime
import sys
from typing import Any

from celery import Task
from celery.exceptions import MaxRetriesExceededError

from ..core.policy import RetryPolicy

#: Task options through which Celery retries a task (its docs: "Automatic retry").
CELERY_RETRY_OPTIONS = (
    "autoretry_for", "dont_autoretry_for", "max_retries", "default_retry_delay",
    "retry_backoff", "retry_backoff_max", "retry_jitter", "retry_kwargs",
)
#: ``max_retries=None`` (retry forever), as a policy's whole number.
UNBOUNDED_RETRIES = sys.maxsize

_RETRY_CODE = Task.retry.__code__


def explicit_celery_retry_options(task_class: type, stop: type) -> list[str]:
    """The Celery retry options that ``task_class`` or a base below ``stop`` sets."""
    found = []
    for klass in task_class.__mro__:
        if klass is stop or not issubclass(klass, stop):
            break
        found.extend(name for name in CELERY_RETRY_OPTIONS
                     if name in vars(klass) and name not in found)
    return found


def policy_from_celery_options(task: Any) -> RetryPolicy:
    """The ``RetryPolicy`` Celery itself would follow for ``task``'s retry options.

    ``retry_on`` is ``autoretry_for`` (empty: only a manual ``self.retry`` retries);
    delays follow ``retry_backoff``/``retry_backoff_max``/``retry_jitter`` (Celery's
    exponential backoff from ``retry_backoff`` seconds) or else the fixed
    ``retry_kwargs["countdown"]``/``default_retry_delay``.
    """
    retry_kwargs = dict(getattr(task, "retry_kwargs", None) or {})
    max_retries = celery_max_retries(task)
    backoff = getattr(task, "retry_backoff", False)
    fields: dict[str, Any] = {
        "max_retries": UNBOUNDED_RETRIES if max_retries is None else max_retries,
        "retry_on": tuple(getattr(task, "autoretry_for", ()) or ()),
        "dont_retry_on": tuple(getattr(task, "dont_autoretry_for", ()) or ()),
    }
    if backoff:  # Celery: min(retry_backoff_max, factor * 2 ** retries), then full jitter
        factor = float(int(max(1.0, float(backoff))))
        cap = max(0.0, float(getattr(task, "retry_backoff_max", 600)))
        fields.update(base_delay=min(factor, cap), backoff_factor=2.0, max_delay=cap,
                      jitter="full" if getattr(task, "retry_jitter", True) else "none")
    else:
        countdown = retry_kwargs.get("countdown", getattr(task, "default_retry_delay", 180))
        countdown = float(countdown or 0)
        fields.update(base_delay=countdown, max_delay=countdown, backoff_factor=1.0,
                      jitter="none")
    return RetryPolicy(**fields)


def gave_up_in_celery_retry(exc: BaseException) -> bool:
    """Whether ``exc`` comes out of ``Task.retry`` because ``max_retries`` was reached.

    Celery re-raises the task's exception from ``retry()`` (or raises
    ``MaxRetriesExceededError``) once the retries are used up, both for
    ``autoretry_for`` and for a manual ``self.retry(exc=...)``.
    """
    if isinstance(exc, MaxRetriesExceededError):
        return True
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is _RETRY_CODE:
            return True
        tb = tb.tb_next
    return False


def retry_delay(retry: Any) -> float | None:
    """Seconds until the retry Celery scheduled (its ``Retry.when``: seconds or an ETA)."""
    when = getattr(retry, "when", None)
    if isinstance(when, datetime.datetime):
        now = datetime.datetime.now(when.tzinfo) if when.tzinfo else datetime.datetime.now()
        return max(0.0, (when - now).total_seconds())
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        return float(when)
    return None


def retried_exception(retry: BaseException) -> BaseException:
    """The failure behind a ``Retry``: its ``exc``, else the exception it was raised in."""
    exc = getattr(retry, "exc", None)
    if isinstance(exc, BaseException):
        return exc
    context = retry.__context__
    return context if context is not None else retry


def celery_max_retries(task: Any) -> int | None:
    """The retry limit Celery applies to ``task`` (``retry_kwargs`` first); None: unbounded."""
    options = getattr(task, "retry_kwargs", None) or {}
    value = options.get("max_retries", getattr(task, "max_retries", None))
    return value if isinstance(value, int) and not isinstance(value, bool) else None
