"""600 webhook hosts through resilient_request: breakers, labels, keys and scrape stay bounded.

One scripted HTTP server answers on 600 loopback ports, so each request goes to its own host
breaker (``http:127.0.0.1:<port>``), whose failure-rate window writes every outcome to Redis.
A solo worker in this process runs the 600 tasks against a private Redis, with
``max_label_values`` set to 50. Then: this process holds at most ``MAX_HOST_BREAKERS`` of
those breakers (even after garbage collection), yet Redis still has the state of all 600;
every breaker key expires; each breaker metric names at most 50 of the hosts plus ``other``;
and the state gauge reads every breaker in one round trip, costing about what one pipelined
read of every live breaker's hash costs.
"""

from __future__ import annotations

import gc
import selectors
import socket
import statistics
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from telemetry_guard import RetryPolicy, TelemetryGuard
from telemetry_guard.breaker import all_breakers, unregister
from telemetry_guard.breaker import breaker as breaker_module
from telemetry_guard.breaker.redis_hash import key_ttl
from telemetry_guard.breaker.state import BreakerConfig
from telemetry_guard.http import (
    MAX_HOST_BREAKERS,
    host_breakers,
    register_resilient_request,
)
from telemetry_guard.sinks.breaker_states import OTHER, BreakerStateCollector
from tests.breakers import CountingConnection
from tests.http_server import Reply, ScriptedHTTPServer

HOSTS = 600
LABEL_BOUND = 50
#: The state gauge's scrape may cost this many times one pipelined read of the breakers.
SCRAPE_RATIO = 4.0


class ManyPorts:
    """A ScriptedHTTPServer that also answers on ``count - 1`` more loopback ports."""

    def __init__(self, count: int) -> None:
        self.server = ScriptedHTTPServer().start()
        self._listeners = []
        self._selector = selectors.DefaultSelector()
        for _ in range(count - 1):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
            self._listeners.append(sock)
        self.ports = [self.server.port, *(s.getsockname()[1] for s in self._listeners)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                try:
                    conn, address = key.fileobj.accept()  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                conn.setblocking(True)
                self.server.httpd.process_request(conn, address)  # a thread per request

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._selector.close()
        for sock in self._listeners:
            sock.close()
        self.server.stop()


def store_errors() -> float:
    """Breaker calls that could not use Redis (``telemetry_errors_total{sink="breaker_store"}``)."""
    return REGISTRY.get_sample_value("telemetry_guard_telemetry_errors_total",
                                     {"sink": "breaker_store"}) or 0.0


@pytest.fixture
def many_ports() -> Iterator[ManyPorts]:
    """One HTTP server on HOSTS loopback ports."""
    server = ManyPorts(HOSTS)
    yield server
    server.stop()


def label_values(text: str, family: str) -> set[str]:
    """The ``breaker`` label values of one metric family in an exposition."""
    found = set()
    for metric in text_string_to_metric_families(text):
        if metric.name == family:
            found |= {s.labels["breaker"] for s in metric.samples if "breaker" in s.labels}
    return found


def test_six_hundred_hosts_keep_breakers_labels_keys_and_scrapes_bounded(
        celery_app: Celery, redis_url: str, many_ports: ManyPorts,
        counted: type[CountingConnection]) -> None:
    """≤ 256 live host breakers, ≤ 50 host labels + other, a TTL on every key, 1 round trip."""
    TelemetryGuard(celery_app, max_label_values=LABEL_BOUND)
    defaults = {"failure_rate_threshold": 0.5, "minimum_calls": 100, "reset_timeout": 60.0}
    task = register_resilient_request(celery_app, name="hooks.deliver",
                                      retry_policy=RetryPolicy(max_retries=0),
                                      breaker_defaults=defaults)
    many_ports.server.script("/hook", Reply(200, {"ok": True}))
    names = {f"http:127.0.0.1:{port}" for port in many_ports.ports}
    for leftover in [b for b in all_breakers() if b.name in names]:
        unregister(leftover)  # an earlier test's breaker for a port that came round again
    # breakers earlier tests still hold (a port can come round again): not this test's
    earlier_breakers = list(breaker_module._live)
    earlier_ids = {id(b) for b in earlier_breakers}

    # labels earlier tests left in this process's registry (a host port can come round again)
    families = ("telemetry_guard_breaker_calls", "telemetry_guard_breaker_state")
    earlier = {family: label_values(generate_latest(REGISTRY).decode(), family)
               for family in families}
    failed_open_before = store_errors()  # after that scrape: earlier tests' breakers count
    started = time.monotonic()
    with start_worker(celery_app, pool="solo", perform_ping_check=False, loglevel="WARNING",
                      shutdown_timeout=10):
        results = []
        for i, port in enumerate(many_ports.ports):
            results.append(task.delay("POST", f"http://127.0.0.1:{port}/hook", json={"n": i}))
        answers = [r.get(timeout=120) for r in results]
    took = time.monotonic() - started
    assert all(a == {"status": "ok", "status_code": 200, "data": {"ok": True},
                     "cached_at": None} for a in answers)

    # the process: at most MAX_HOST_BREAKERS of these breakers, registered or alive at all
    gc.collect()
    registered = {b.name for b in all_breakers()} & names
    alive = {b.name for b in list(breaker_module._live) if id(b) not in earlier_ids} & names
    assert len(registered) <= MAX_HOST_BREAKERS and len(alive) <= MAX_HOST_BREAKERS
    assert len(host_breakers) <= MAX_HOST_BREAKERS

    # Redis: the state of all 600 kept, and every key of theirs expires. A call whose Redis
    # round trip timed out on a loaded machine failed open (counted): its host has no key.
    failed_open = int(store_errors() - failed_open_before)
    assert failed_open <= 3
    client = redis.Redis.from_url(redis_url)
    hashes = [f"telemetry_guard:breaker:{{{name}}}" for name in names]
    assert sum(client.exists(key) for key in hashes) == HOSTS - failed_open
    keys = list(client.scan_iter(match="telemetry_guard:breaker:{http:*", count=1000))
    assert len(keys) == 2 * (HOSTS - failed_open)  # the hash and the failure-rate window
    limit = key_ttl(BreakerConfig(**defaults)) * 1000
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
    assert all(0 < ttl <= limit for ttl in pipe.execute())

    # labels: every breaker metric names at most LABEL_BOUND of the hosts, the rest `other`
    text = generate_latest(REGISTRY).decode()
    for family in families:
        shown = label_values(text, family)
        assert len((shown - earlier[family]) & names) <= LABEL_BOUND, family
        assert OTHER in shown, family

    # the scrape: one round trip for all breaker states, costing about what one pipelined
    # read of every live breaker's hash costs, timed in the same run
    collector = BreakerStateCollector()
    list(collector.collect())
    live = [f"telemetry_guard:breaker:{{{b.name}}}" for b in all_breakers()]
    timings, writes, references = [], [], []
    for _ in range(5):
        counted.writes = 0
        begun = time.perf_counter()
        list(collector.collect())
        timings.append(time.perf_counter() - begun)
        writes.append(counted.writes)
        begun = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for key in live:
            pipe.hgetall(key)
        pipe.execute()
        references.append(time.perf_counter() - begun)
    median, plain = statistics.median(timings), statistics.median(references)
    print(f"\n{HOSTS} hosts in {took:.1f}s; {len(registered)} breakers live; "
          f"scrape of the state gauge: median {median * 1000:.1f} ms, writes {writes}; "
          f"one pipelined read of the {len(live)} hashes: {plain * 1000:.1f} ms")
    assert writes == [1] * 5
    assert median < SCRAPE_RATIO * plain
