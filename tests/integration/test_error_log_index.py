"""The error log's per-task index: ``--task`` answers agree with a full scan, across an upgrade.

Records go through the real error-log sink into a private redis-server; each query is
compared with a brute-force filter over the whole stream, for records written before the
index existed (as an earlier release wrote them), after it, and both.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator

import pytest
import redis

from telemetry_guard.cli.stream_query import RecordFilter, Window, id_ms, severities_from
from telemetry_guard.cli.streams import GuardStreams
from telemetry_guard.core.classify import Severity
from telemetry_guard.core.events import FailureEvent
from telemetry_guard.sinks.errorlog import ErrorLogSink
from telemetry_guard.stores.keys import index_key
from tests.servers import RedisServer, start_redis

PREFIX = "t:"
ERRORS = PREFIX + "errors"
TASKS = ["shop.charge", "shop.charge", "shop.charge", "shop.ship", "billing.reconcile",
         "mail.digest"]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    client = server.client(3)
    client.flushdb()
    yield client
    client.flushdb()


def failure(rng: random.Random, n: int) -> FailureEvent:
    return FailureEvent(
        task_name=rng.choice(TASKS), task_id=f"id-{n}", attempt=1, max_retries=0,
        exception_type=rng.choice(["ValueError", "KeyError"]), exception_module="builtins",
        message=f"failure {n}", traceback="", severity=rng.choice(list(Severity)),
        decision="give_up", reason="not_retryable", args=[n], kwargs={},
        timestamp=time.time())


def write_through_sink(url: str, rng: random.Random, count: int, *, start: int,
                       maxlen: int = 100_000) -> None:
    """``count`` failures through the error-log sink, in batches a few ms apart."""
    sink = ErrorLogSink(url, key_prefix=PREFIX, maxlen=maxlen)
    try:
        for n in range(start, start + count):
            sink.on_failure(failure(rng, n))
            if n % 50 == 0:
                sink.flush()
                time.sleep(0.003)
        sink.flush()
    finally:
        sink.close()


def write_as_before(client: redis.Redis, rng: random.Random, count: int) -> None:
    """``count`` records as an earlier release wrote them: the stream only, no index."""
    for n in range(count):
        event = failure(rng, -n - 1)
        client.xadd(ERRORS, {"record": json.dumps(event.as_record())})
        if n % 50 == 0:
            time.sleep(0.003)


def brute_force(client: redis.Redis, flt: RecordFilter, window: Window,
                limit: int | None, *, newest_first: bool = True) -> list[str]:
    low = -1 if window.since is None else int(window.since * 1000)
    high = float("inf") if window.until is None else int(window.until * 1000)
    items = client.xrange(ERRORS)
    if newest_first:
        items = items[::-1]
    ids = [i.decode() for i, fields in items
           if low <= id_ms(i.decode()) <= high and flt.matches(json.loads(fields[b"record"]))]
    return ids[:limit]


def check_agree(client: redis.Redis, url: str) -> int:
    """Every query gives the full scan's answer, newest and oldest first; returns cases run."""
    ids = [i.decode() for i, _ in client.xrange(ERRORS)]
    quarter, mid = id_ms(ids[len(ids) // 4]) / 1000, id_ms(ids[len(ids) // 2]) / 1000
    late = id_ms(ids[len(ids) * 3 // 4]) / 1000
    high = severities_from(min_severity="high")
    cases = [
        (RecordFilter(tasks=("billing.reconcile",)), Window(), 50),
        (RecordFilter(tasks=("billing.reconcile",)), Window(), None),
        (RecordFilter(tasks=("shop.charge",)), Window(), None),  # pages of 200, then 1000
        (RecordFilter(tasks=("shop.charge",), severities=high), Window(since=quarter), 300),
        (RecordFilter(tasks=("shop.charge", "mail.digest")), Window(), 1300),
        (RecordFilter(tasks=("shop.ship", "mail.digest"), severities=high),
         Window(since=quarter, until=late), None),
        (RecordFilter(tasks=("billing.reconcile",)), Window(until=quarter), None),
        (RecordFilter(tasks=("billing.reconcile",)), Window(since=late), None),
        (RecordFilter(tasks=("billing.reconcile",), grep="failure 1"), Window(since=mid), 20),
        (RecordFilter(tasks=("shop.*",)), Window(since=mid), 100),
        (RecordFilter(tasks=("no.such.task",)), Window(), None),
    ]
    streams = GuardStreams(url, PREFIX)
    for flt, window, limit in cases:
        for newest_first in (True, False):
            got = [e.id for e in streams.scan(ERRORS, window, flt, limit=limit,
                                              newest_first=newest_first)]
            want = brute_force(client, flt, window, limit, newest_first=newest_first)
            assert got == want, (flt, window, limit, newest_first)
        counted = streams.count(ERRORS, window, flt).rows()
        assert sum(row["count"] for row in counted) == len(brute_force(client, flt, window, None))
    return len(cases)


def test_indexed_answers_agree_with_a_full_scan(server: RedisServer,
                                                client: redis.Redis) -> None:
    url = f"{server.url}/3"
    write_through_sink(url, random.Random(1), 2500, start=0)
    assert client.xlen(index_key(ERRORS, "billing.reconcile")) > 0
    assert sum(client.xlen(index_key(ERRORS, t)) for t in set(TASKS)) == client.xlen(ERRORS)
    assert check_agree(client, url) > 10


def test_records_written_before_the_upgrade_are_still_found(server: RedisServer,
                                                            client: redis.Redis) -> None:
    """An earlier release's records (no index) and this one's, in one answer."""
    url = f"{server.url}/3"
    write_as_before(client, random.Random(2), 1200)
    write_through_sink(url, random.Random(3), 1300, start=0)
    check_agree(client, url)


def test_a_trimmed_log_answers_only_with_records_it_still_holds(server: RedisServer,
                                                                client: redis.Redis) -> None:
    url = f"{server.url}/3"
    write_through_sink(url, random.Random(4), 3000, start=0, maxlen=500)
    assert client.xlen(ERRORS) < 3000
    check_agree(client, url)


def test_a_log_deleted_and_made_again_starts_a_fresh_index(server: RedisServer,
                                                          client: redis.Redis) -> None:
    """Ids of a deleted log (here, from a clock that ran ahead) never block new records."""
    url = f"{server.url}/3"
    ahead = f"{int(time.time() * 1000) + 3_600_000}-0"
    for task in set(TASKS):
        client.xadd(index_key(ERRORS, task), {"i": ""}, id=ahead)
    write_through_sink(url, random.Random(5), 300, start=0)
    assert client.xlen(ERRORS) == 300
    assert sum(client.xlen(index_key(ERRORS, t)) for t in set(TASKS)) == 300
    check_agree(client, url)


def test_without_scripts_every_record_is_kept_and_found() -> None:
    """A Redis that refuses scripts still gets every record, and ``--task`` scans for them."""
    server = start_redis()
    try:
        server.client().acl_setuser("default", enabled=True, nopass=True, reset=True,
                                    commands=["+@all", "-@scripting"], keys=["*"],
                                    channels=["*"])
        url = f"{server.url}/0"
        write_through_sink(url, random.Random(6), 400, start=0)
        client = server.client()
        assert client.xlen(ERRORS) == 400
        flt = RecordFilter(tasks=("billing.reconcile",))
        got = [e.id for e in GuardStreams(url, PREFIX).scan(ERRORS, Window(), flt)]
        assert got == brute_force(client, flt, Window(), None) and got
    finally:
        server.stop()
