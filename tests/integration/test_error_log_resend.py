"""A batch whose reply is lost is sent again, and nothing is written twice.

A TCP proxy in front of a private redis-server lets the batch run on the server, then closes
the writer's connection before the reply arrives: the writer keeps the batch, sends it again
on a new connection, and the scripts skip the records the first send already wrote.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from telemetry_guard.core.classify import Severity
from telemetry_guard.core.events import FailureEvent
from telemetry_guard.sinks.errorlog import ErrorLogSink
from tests.forking import in_child
from tests.lossy_proxy import LossyProxy
from tests.servers import RedisServer, start_redis, wait_for

PREFIX = "resend:"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


def give_up(n: int) -> FailureEvent:
    return FailureEvent(
        task_name="shop.charge", task_id=f"id-{n}", attempt=1, max_retries=0,
        exception_type="ValueError", exception_module="builtins", message=f"failure {n}",
        traceback="", severity=Severity.HIGH, decision="give_up", reason="not_retryable",
        args=[n], kwargs={}, timestamp=time.time(),
        replay={"task": "shop.charge", "id": f"id-{n}", "args": [n], "kwargs": {}})


def task_ids(client: redis.Redis, key: str) -> list[str]:
    return [json.loads(fields[b"record"])["task_id"] for _, fields in client.xrange(key)]


def test_a_batch_sent_again_after_a_lost_reply_writes_each_record_once(
        server: RedisServer) -> None:
    client = server.client(0)
    proxy = LossyProxy(server.port)
    errors: list[object] = []
    sink = ErrorLogSink(proxy.url, key_prefix=PREFIX, flush_interval=0.05,
                        report_error=lambda sink, exc: errors.append(exc))
    try:
        sink.on_failure(give_up(0))  # connects and loads the scripts
        sink.flush()
        proxy.lose_next_reply()
        for n in range(1, 41):
            sink.on_failure(give_up(n))
        sink.flush(timeout=10)
        wait_for(lambda: client.xlen(PREFIX + "errors") >= 41, timeout=10)
        time.sleep(0.3)  # a second copy would be written by now
    finally:
        sink.close()
        proxy.close()

    assert proxy.replies_lost == 1
    assert any(isinstance(e, redis.ConnectionError) for e in errors)  # the writer saw it
    expected = [f"id-{n}" for n in range(41)]
    assert task_ids(client, PREFIX + "errors") == expected
    assert task_ids(client, PREFIX + "dead") == expected


def test_two_processes_writing_alike_are_not_taken_for_one(server: RedisServer) -> None:
    """The sequence numbers are per writer: another sink's record 1 is not a duplicate."""
    client = server.client(0)
    client.delete(PREFIX + "errors")
    sinks = [ErrorLogSink(server.url, key_prefix=PREFIX) for _ in range(2)]
    try:
        for sink in sinks:
            sink.on_failure(give_up(7))
            sink.flush()
    finally:
        for sink in sinks:
            sink.close()
    assert task_ids(client, PREFIX + "errors") == ["id-7", "id-7"]


def test_a_forked_child_is_a_writer_of_its_own(server: RedisServer) -> None:
    """A child forked after its parent wrote (no after_fork hook called) does not take up
    the parent's sequence: the parent's records after the child's are not skipped as
    already written."""
    client = server.client(0)
    client.delete(PREFIX + "errors")
    sink = ErrorLogSink(server.url, key_prefix=PREFIX)
    try:
        for n in range(3):
            sink.on_failure(give_up(n))
        sink.flush()

        def child_writes() -> None:
            for n in range(3, 6):
                sink.on_failure(give_up(n))
            sink.flush()

        in_child(child_writes)
        for n in range(6, 9):
            sink.on_failure(give_up(n))
        sink.flush()
    finally:
        sink.close()
    assert task_ids(client, PREFIX + "errors") == [f"id-{n}" for n in range(9)]
