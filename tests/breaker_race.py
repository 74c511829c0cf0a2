"""Many processes, one breaker: the race every shared store must win, on any Redis shape.

The helpers connect with the package's own client factory, so the same race runs on a single
server, behind TLS or an ACL user, behind Sentinel and on a Redis Cluster.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

from telemetry_guard.breaker import CircuitBreaker, CircuitOpenError, set_transition_listener
from telemetry_guard.core.events import BreakerChange
from telemetry_guard.stores.redis_client import new_redis_client
from tests.forking import FORK

PROCESSES = 8


class RemoteDown(Exception):
    """The dependency behind the breaker failed."""


def breaker_on(url: str, name: str, **settings: Any) -> CircuitBreaker:
    return CircuitBreaker(name, storage="redis", redis_url=url, **settings)


def boom() -> None:
    raise RemoteDown("503")


def attempt(breaker: CircuitBreaker, fn: Callable[[], object]) -> str:
    """Call through the breaker; say what happened instead of raising."""
    try:
        breaker.call(fn)
    except CircuitOpenError:
        return "rejected"
    except RemoteDown:
        return "failed"
    return "ran"


def run_processes(target: Callable[[Any], dict[str, Any]], count: int = PROCESSES,
                  timeout: float = 30.0) -> list[dict[str, Any]]:
    """Fork ``count`` processes running ``target(barrier)``; return what each one reported."""
    queue = FORK.Queue()
    barrier = FORK.Barrier(count)

    def run() -> None:
        heard: list[BreakerChange] = []
        set_transition_listener(heard.append)
        try:
            report = target(barrier)
            report["changes"] = [(c.from_state, c.to_state, c.reason) for c in heard]
            queue.put(report)
        except BaseException:
            queue.put({"error": traceback.format_exc()})

    processes = [FORK.Process(target=run) for _ in range(count)]
    for process in processes:
        process.start()
    try:
        reports = [queue.get(timeout=timeout) for _ in processes]
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
    errors = [r["error"] for r in reports if "error" in r]
    assert not errors, errors[0]
    return reports


def transitions(reports: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((a, b) for report in reports for a, b, _ in report["changes"])




def race_once(url: str, name: str) -> None:
    """Eight processes trip one breaker, then race for its half-open permits; check the facts."""
    threshold, max_calls, reset_timeout = 3, 2, 0.2
    breaker = breaker_on(url, name, failure_threshold=threshold, reset_timeout=reset_timeout,
                         half_open_max_calls=max_calls)
    breaker.snapshot()  # the parent has a client and a view: children must rebuild theirs
    key = f"telemetry_guard:breaker:{{{name}}}"

    def hammer(barrier: Any) -> dict[str, Any]:
        raw = new_redis_client(url)
        seen: list[str] = []

        def trial() -> None:
            state = raw.hget(key, "state")
            seen.append(state.decode() if state else "closed")
            if seen[-1] == "half_open":
                time.sleep(0.02)  # hold the permit while the others try their luck

        barrier.wait()
        failed = 0
        while attempt(breaker, boom) == "failed":
            failed += 1
        barrier.wait()
        time.sleep(reset_timeout + 0.02)
        barrier.wait()
        retry_afters = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (not seen or seen[-1] != "closed"):
            try:
                breaker.call(trial)
            except CircuitOpenError as exc:
                retry_afters.append(exc.retry_after)
                time.sleep(0.002)
        return {"failed": failed, "seen": seen, "retry_afters": retry_afters}

    reports = run_processes(hammer)
    assert transitions(reports) == {("closed", "open"): 1, ("open", "half_open"): 1,
                                    ("half_open", "closed"): 1}
    failed = sum(r["failed"] for r in reports)
    assert threshold <= failed <= threshold + PROCESSES
    seen = Counter(state for r in reports for state in r["seen"])
    assert seen["half_open"] == max_calls, "half-open admitted exactly max_calls trials"
    assert set(seen) <= {"half_open", "closed"}, "no call ran while the breaker was open"
    assert all(r["seen"][-1] == "closed" for r in reports)
    assert all(0 <= s <= reset_timeout for r in reports for s in r["retry_afters"])
    raw = new_redis_client(url)
    assert raw.hget(key, "gen") == b"3" and raw.hget(key, "permit_seq") == str(max_calls).encode()
