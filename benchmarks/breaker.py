"""Calls per second through a closed CircuitBreaker, memory and Redis, against their floors.

Times, in one run and on a private redis-server: a bare function call, a closed breaker
with memory storage (with and without the failure-rate window), a bare Redis PING (one
round trip), and a closed breaker with Redis storage; counts the commands each Redis call
sends (INFO commandstats: script calls plus anything issued outside a script). Medians of
9 interleaved loops. Targets: memory adds < 5 µs per call; Redis costs <= 1 round trip per
closed call.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from benchmarks._redis import start_redis  # noqa: E402
from telemetry_guard.breaker import CircuitBreaker  # noqa: E402
from telemetry_guard.stores.scripts import lua  # noqa: E402

#: Commands the breaker's Lua script runs; Redis counts them under their own names.
INSIDE_SCRIPT = {name.lower() for name in re.findall(r"redis\.p?call\('(\w+)'", lua("breaker"))}


def per_call(fns: dict[str, Callable[[], Any]], loops: int,
             rounds: int = 9) -> dict[str, float]:
    """Median over ``rounds`` of the microseconds one call of each fn takes.

    The fns take turns within each round, so drift on a busy machine hits them alike.
    """
    samples: dict[str, list[float]] = {label: [] for label in fns}
    for _ in range(rounds):
        for label, fn in fns.items():
            started = time.perf_counter()
            for _ in range(loops):
                fn()
            samples[label].append((time.perf_counter() - started) / loops * 1e6)
    return {label: statistics.median(values) for label, values in samples.items()}


def command_calls(client: redis.Redis) -> Counter[str]:
    """Calls per command name since the server started."""
    stats = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(value["calls"])
                    for name, value in stats.items()})


def round_trips(client: redis.Redis, fn: Callable[[], Any], calls: int) -> float:
    """Commands a client sent per ``fn()``: scripts, plus any command no script runs."""
    before = command_calls(client)
    for _ in range(calls):
        fn()
    spent = command_calls(client) - before
    spent.pop("info", None)
    sent = sum(count for name, count in spent.items()
               if name.startswith(("eval", "fcall")) or name not in INSIDE_SCRIPT)
    return sent / calls


def noop() -> None:
    """The guarded function: does nothing, so the table shows the breaker's own cost."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=20000,
                        help="calls per timed loop for in-process rows (20000)")
    parser.add_argument("--redis-loops", type=int, default=2000,
                        help="calls per timed loop for rows that talk to Redis (2000)")
    args = parser.parse_args(argv)
    server = start_redis()
    try:
        client = server.client()
        memory = CircuitBreaker("bench-memory", storage="memory")
        memory_rate = CircuitBreaker("bench-memory-rate", storage="memory",
                                     failure_rate_threshold=0.5)
        shared = CircuitBreaker("bench-redis", redis_url=server.url())
        shared_rate = CircuitBreaker("bench-redis-rate", redis_url=server.url(),
                                     failure_rate_threshold=0.5)
        for breaker in (shared, shared_rate):
            for _ in range(200):  # connect, load the script, fill the rate window
                breaker.call(noop)
        ping = server.client().ping
        ping()

        local = per_call({
            "bare function call: noop()": noop,
            "memory breaker: breaker.call(noop)": lambda: memory.call(noop),
            "memory breaker + failure-rate window": lambda: memory_rate.call(noop),
        }, args.loops)
        remote_fns: dict[str, Callable[[], Any]] = {
            "bare Redis PING (1 round trip)": ping,
            "redis breaker: breaker.call(noop)": lambda: shared.call(noop),
            "redis breaker + failure-rate window": lambda: shared_rate.call(noop),
        }
        remote = per_call(remote_fns, args.redis_loops)
        trips = {label: round_trips(client, fn, 1000) for label, fn in remote_fns.items()}
        rows: list[tuple[str, float, float | None]] = [
            (label, cost, None) for label, cost in local.items()]
        rows += [(label, cost, trips[label]) for label, cost in remote.items()]
        bare, mem, mem_rate = local.values()
        ping_cost, red, red_rate = remote.values()

        print(f"redis-server {server.version()}, Python {sys.version.split()[0]}")
        print(f"{'path':<40} {'µs/call':>9} {'calls/s':>11} {'round trips':>12}")
        for label, cost, sent in rows:
            shown = "-" if sent is None else f"{sent:.3f}"
            print(f"{label:<40} {cost:9.2f} {1e6 / cost:11,.0f} {shown:>12}")
        print()
        print(f"memory breaker adds {mem - bare:.2f} µs per call "
              f"({mem / bare:.0f}× a bare call; with the rate window {mem_rate - bare:.2f} µs)"
              f"  target < 5 µs: {'met' if mem - bare < 5 else 'MISSED'}")
        worst = max(list(trips.values())[1:])
        print(f"redis breaker costs {red / ping_cost:.2f}× a PING "
              f"({red - ping_cost:+.1f} µs; with the rate window {red_rate / ping_cost:.2f}×), "
              f"{worst:.3f} round trips per call  target <= 1: "
              f"{'met' if worst <= 1 else 'MISSED'}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
