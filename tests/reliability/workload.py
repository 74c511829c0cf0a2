"""The mixed workload every fault runs against: 21 tasks of every kind the guard handles.

Successes, retries that recover, retries exhausted, non-retryable give-ups, a circuit
breaker that trips (two failures, then two calls rejected and served by the fallback), and
two CRITICAL failures with distinct fingerprints (routed to e-mail). One task, ``pause``,
holds the worker until the test releases it, so that a fault can be started at a known
point of the run (after the breaker's calls) or spanned by a task that touches nothing.

Tasks count their attempts in the *stable* Redis (never the one a fault breaks), so the
same code serves an in-process solo worker and a ``celery worker -P prefork`` subprocess.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from telemetry_guard import CircuitBreaker, GuardedTask, RetryPolicy

#: Retries fast enough for a test: two of them, 10-50 ms apart.
POLICY = RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.05)
NO_RETRY = RetryPolicy(max_retries=0)
#: The exception types of the two CRITICAL failures: two fingerprints, two mails.
CRITICAL_EXCEPTIONS = {"RuntimeError": RuntimeError, "LookupError": LookupError}
BREAKER_THRESHOLD = 2
#: The longest a ``pause`` task waits for its release.
PAUSE_LIMIT = 60.0
#: The prefork worker's soft time limit, well below the hard one: the HIGH event must come
#: at the soft one.
SOFT_LIMIT = 1.0
HARD_LIMIT = 30.0


@dataclass(frozen=True)
class Job:
    """One task of the workload: its kind (the task), a key unique in the run, an argument."""

    kind: str
    key: str
    arg: str = ""


def _jobs() -> list[Job]:
    kinds = (["dependency"] * 4 + ["pause"]
             + ["ok", "flaky", "critical:RuntimeError", "ok", "exhausted", "invalid", "ok",
                "flaky", "ok", "critical:LookupError", "exhausted", "ok", "invalid", "flaky",
                "ok", "ok"])
    jobs = []
    for i, spec in enumerate(kinds):
        kind, _, arg = spec.partition(":")
        jobs.append(Job(kind, f"{kind}-{i}", arg))
    return jobs


#: The workload, in submission order (a solo worker runs it in this order).
JOBS = _jobs()
#: What each job ends with: (kind, result or exception type, times its body ran).
EXPECTED_BY_KIND: dict[str, tuple[Any, int]] = {
    "ok": ("ok", 1),
    "pause": ("ok", 1),
    "flaky": ("recovered", 3),
    "exhausted": ("TimeoutError", 3),
    "invalid": ("ValueError", 1),
}


def expected(jobs: list[Job] = JOBS) -> list[tuple[str, Any, int]]:
    """The outcome of every job of a healthy run."""
    outcomes: list[tuple[str, Any, int]] = []
    dependency_calls = 0
    for job in jobs:
        if job.kind == "dependency":
            # The first calls fail (served by the fallback) and trip the breaker; the
            # breaker rejects the later ones without running the body.
            dependency_calls += 1
            outcomes.append((job.kind, "fallback",
                             1 if dependency_calls <= BREAKER_THRESHOLD else 0))
        elif job.kind == "critical":
            outcomes.append((job.kind, job.arg, 1))
        else:
            value, attempts = EXPECTED_BY_KIND[job.kind]
            outcomes.append((job.kind, value, attempts))
    return outcomes


#: The failed attempts of one run (each one error-log record): 3 flaky x 2, 2 exhausted x 3,
#: 2 invalid, 2 dependency calls that ran, 2 critical.
FAILED_ATTEMPTS = 18


def critical_subjects(prefix: str) -> set[str]:
    """The subjects of the mails the two CRITICAL failures of a run send."""
    return {f"[CRITICAL] {prefix}.critical: {name}" for name in CRITICAL_EXCEPTIONS}


_clients: dict[tuple[str, int], redis.Redis] = {}


def _client(url: str) -> redis.Redis:
    """A client of the stable Redis for this process (a forked child makes its own)."""
    key = (url, os.getpid())
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = redis.Redis.from_url(url, socket_timeout=10)
    return client


class Counters:
    """The run's bookkeeping in the stable Redis: attempts per job, and the pause gate."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def attempt(self, key: str) -> None:
        _client(self.url).incr(self._key(f"attempts:{key}"))

    def attempts(self, key: str) -> int:
        return int(_client(self.url).get(self._key(f"attempts:{key}")) or 0)

    def pause(self) -> None:
        """Called by the ``pause`` task: say it started, wait until released."""
        client = _client(self.url)
        client.set(self._key("paused"), 1)
        deadline = time.monotonic() + PAUSE_LIMIT
        while not client.exists(self._key("release")) and time.monotonic() < deadline:
            time.sleep(0.02)

    def wait_paused(self, timeout: float = 30.0) -> None:
        """Wait until the ``pause`` task runs (every job before it has finished)."""
        deadline = time.monotonic() + timeout
        while not _client(self.url).exists(self._key("paused")):
            if time.monotonic() > deadline:
                raise AssertionError(f"the pause task did not start within {timeout}s")
            time.sleep(0.02)

    def release(self) -> None:
        _client(self.url).set(self._key("release"), 1)

    def set(self, name: str, value: Any) -> None:
        _client(self.url).set(self._key(name), value)

    def get(self, name: str) -> bytes | None:
        value = _client(self.url).get(self._key(name))
        return value if value is None else bytes(value)


def dependency_fallback(*args: Any, **kwargs: Any) -> str:
    """What the dependency task returns when it failed or its breaker is open."""
    return "fallback"


def register(app: Celery, prefix: str, counters_url: str) -> dict[str, Any]:
    """Register the workload's tasks on ``app`` as ``<prefix>.<kind>``; returns them by kind.

    The breaker (a fresh one per prefix) keeps its state in the guard's Redis, as a
    breaker built with ``redis_url=None`` does.
    """
    counters = Counters(counters_url, prefix)
    breaker = CircuitBreaker(f"{prefix}.dependency", failure_threshold=BREAKER_THRESHOLD,
                             reset_timeout=3600.0)

    def task(kind: str, **options: Any) -> Callable[[Callable[..., Any]], Any]:
        return app.task(bind=True, base=GuardedTask, name=f"{prefix}.{kind}", shared=False,
                        **options)

    @task("ok")
    def ok(self: GuardedTask, key: str) -> str:
        counters.attempt(key)
        time.sleep(0.02)
        return "ok"

    @task("pause")
    def pause(self: GuardedTask, key: str) -> str:
        counters.attempt(key)
        counters.pause()
        return "ok"

    @task("flaky", retry_policy=POLICY)
    def flaky(self: GuardedTask, key: str) -> str:
        counters.attempt(key)
        if self.request.retries < 2:
            raise ConnectionError("upstream reset the connection")
        return "recovered"

    @task("exhausted", retry_policy=POLICY)
    def exhausted(self: GuardedTask, key: str) -> None:
        counters.attempt(key)
        raise TimeoutError("upstream did not answer")

    @task("invalid", retry_policy=POLICY)
    def invalid(self: GuardedTask, key: str) -> None:
        counters.attempt(key)
        raise ValueError("payload failed validation")

    @task("dependency", breaker=breaker, fallback=dependency_fallback, retry_policy=NO_RETRY)
    def dependency(self: GuardedTask, key: str) -> str:
        counters.attempt(key)
        raise ConnectionError("dependency is down")

    @task("critical", severity="critical")
    def critical(self: GuardedTask, key: str, exception: str) -> None:
        counters.attempt(key)
        raise CRITICAL_EXCEPTIONS[exception](f"ledger {key} does not balance")

    return {"ok": ok, "pause": pause, "flaky": flaky, "exhausted": exhausted,
            "invalid": invalid, "dependency": dependency, "critical": critical,
            "breaker": breaker}


def submit(app: Celery, prefix: str, queue: str, jobs: list[Job] = JOBS) -> list[Any]:
    """Publish every job by task name (works for in-process and subprocess workers)."""
    results = []
    for job in jobs:
        args = (job.key, job.arg) if job.arg else (job.key,)
        results.append(app.send_task(f"{prefix}.{job.kind}", args=args, queue=queue))
    return results


def outcome(result: Any, timeout: float) -> Any:
    """A task's return value, or the name of the exception it ended with."""
    value = result.get(timeout=timeout, propagate=False)
    if isinstance(value, BaseException):
        return type(value).__name__
    return value


def collect(counters: Counters, jobs: list[Job], results: list[Any],
            timeout: float = 60.0) -> list[tuple[str, Any, int]]:
    """(kind, outcome, attempts) of every job, in submission order."""
    deadline = time.monotonic() + timeout
    outcomes = []
    for job, result in zip(jobs, results, strict=True):
        value = outcome(result, max(1.0, deadline - time.monotonic()))
        outcomes.append((job.kind, value, counters.attempts(job.key)))
    return outcomes


def run(app: Celery, prefix: str, queue: str, counters: Counters, *,
        during: Callable[[Counters], None] | None = None,
        jobs: list[Job] = JOBS) -> list[tuple[str, Any, int]]:
    """Submit the workload, let ``during`` inject the fault (it must release the pause)."""
    if during is None:
        counters.release()
    results = submit(app, prefix, queue, jobs)
    if during is not None:
        during(counters)
    return collect(counters, jobs, results)
