"""Calls per second through a closed CircuitBreaker, memory and Redis, against their floors.

Times, in one run and on a private redis-server: a bare function call, a closed breaker
with memory storage (with and without the failure-rate window), a bare Redis PING (one
round trip), and a closed breaker with Redis storage; counts the commands each Redis call
sends (INFO commandstats: script calls plus anything issued outside a script). Medians of
9 interleaved loops. Targets: memory adds < 5 µs per call; Redis costs <= 1 round trip per
closed call.

``--shapes standalone sentinel cluster`` times the closed Redis breaker against a Sentinel
master and a three-master Cluster too (each started here, as the tests start them), beside a
PING through the same client: still one round trip per call.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
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
    """Commands a client sent per ``fn()``: scripts, plus any command no script runs.

    One call first, uncounted: a breaker idle for ``CLOSED_TRUST_INTERVAL`` asks Redis once
    before trusting its closed view again (one more script, not per call).
    """
    fn()
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


def sends_per_call(fn: Callable[[], Any], calls: int) -> float:
    """Requests this process sent per ``fn()``, counted where redis-py writes to a socket
    (a pipeline is one): what the server counts would include a Sentinel's and a replica's
    own commands to the master."""
    from redis.connection import AbstractConnection

    sends = 0
    original = AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        nonlocal sends
        sends += 1
        original(self, command, check_health)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    try:
        for _ in range(calls):
            fn()
    finally:
        AbstractConnection.send_packed_command = original  # type: ignore[method-assign]
    return sends / calls


def shape_rows(shapes: list[str], loops: int) -> list[tuple[str, float, float, float]]:
    """Per shape: µs per closed-breaker call, µs per PING through the same client, and the
    requests sent per call."""
    from telemetry_guard.stores.redis_client import new_redis_client, use_redis_options
    from tests.redis_topologies import start_cluster, start_sentinel_group

    starts: dict[str, Callable[[], Any]] = {"sentinel": start_sentinel_group,
                                            "cluster": start_cluster}
    rows = []
    for shape in shapes:
        if shape == "standalone":
            continue
        started = starts[shape]()
        try:
            use_redis_options(started.url, started.options)
            breaker = CircuitBreaker(f"bench-{shape}", redis_url=started.url)
            for _ in range(200):
                breaker.call(noop)
            client = new_redis_client(started.url)
            call = partial(breaker.call, noop)
            cost = per_call({"breaker": call, "ping": client.ping}, loops)
            call()  # uncounted, as in round_trips
            sent = sends_per_call(call, 1000)
            rows.append((shape, cost["breaker"], cost["ping"], sent))
        finally:
            started.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=20000,
                        help="calls per timed loop for in-process rows (20000)")
    parser.add_argument("--redis-loops", type=int, default=2000,
                        help="calls per timed loop for rows that talk to Redis (2000)")
    parser.add_argument("--shapes", nargs="+", default=["standalone"],
                        choices=["standalone", "sentinel", "cluster"],
                        help="Redis shapes to time the closed breaker on (standalone)")
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
    shaped = shape_rows(args.shapes, args.redis_loops)
    if shaped:
        print()
        print(f"{'shape':<12} {'breaker µs/call':>16} {'PING µs':>9} {'ratio':>6} "
              f"{'round trips':>12}")
        for shape, cost, ping_cost, sent in shaped:
            print(f"{shape:<12} {cost:16.2f} {ping_cost:9.2f} {cost / ping_cost:6.2f} "
                  f"{sent:12.3f}  target <= 1: {'met' if sent <= 1 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
