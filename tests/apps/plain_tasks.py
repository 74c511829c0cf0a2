"""Plain Celery tasks in Celery's own retry idioms, written as if telemetry_guard did not exist.

This module must never import telemetry_guard: the guard observes these tasks only
because the app that includes them (``tests.apps.observed_app``) has a guard.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import shared_task


def count_run(task: Any) -> None:
    """Count one execution of the task's body, in Redis (pool children share no memory)."""
    redis.Redis.from_url(task.app.conf.broker_url).incr(f"runs:{task.request.id}")


@shared_task(bind=True, name="plain.autoretry", autoretry_for=(ConnectionError,),
             max_retries=2, default_retry_delay=0)
def autoretry(self: Any) -> None:
    """Always fails with a retryable error: Celery retries it twice, then gives up."""
    count_run(self)
    raise ConnectionError("inventory service unreachable")


@shared_task(bind=True, name="plain.manual_retry", max_retries=2)
def manual_retry(self: Any) -> None:
    """Always fails and retries itself by hand, with no delay."""
    count_run(self)
    try:
        raise KeyError("order-17")
    except KeyError as exc:
        raise self.retry(exc=exc, countdown=0) from exc


@shared_task(bind=True, name="plain.fail")
def fail(self: Any) -> None:
    """Fails once, with no retry."""
    count_run(self)
    raise ValueError("malformed order")


class DeclinedError(ConnectionError):
    """A ConnectionError subclass that retrying cannot fix."""


@shared_task(bind=True, name="plain.backoff", autoretry_for=(ConnectionError,), max_retries=2,
             retry_backoff=True, retry_backoff_max=0, retry_jitter=True)
def backoff(self: Any) -> None:
    """Exponential backoff capped at 0 s (with full jitter): two quick retries, then give up."""
    count_run(self)
    raise ConnectionError("warehouse API unreachable")


@shared_task(bind=True, name="plain.dont_autoretry", autoretry_for=(ConnectionError,),
             dont_autoretry_for=(DeclinedError,), max_retries=2, default_retry_delay=0)
def dont_autoretry(self: Any) -> None:
    """Raises an excluded subclass: Celery does not retry it."""
    count_run(self)
    raise DeclinedError("card declined")


@shared_task(bind=True, name="plain.retry_kwargs", autoretry_for=(ConnectionError,),
             retry_kwargs={"max_retries": 1, "countdown": 0})
def retry_kwargs(self: Any) -> None:
    """``retry_kwargs`` set the limit and the countdown: one retry, then give up."""
    count_run(self)
    raise ConnectionError("mail relay unreachable")
