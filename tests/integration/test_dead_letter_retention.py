"""Dead letters keep their own retention per task, on a private Redis; evictions are counted.

Give-ups go through the guard (dispatcher → error-log sink → its writer thread), so the
eviction counter and log line are the ones a worker produces; the last test runs a real
prefork worker and reads the counter from its main process's ``/metrics``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from telemetry_guard import TelemetryGuard
from telemetry_guard.core.classify import Severity
from telemetry_guard.core.events import FailureEvent
from telemetry_guard.stores.dead_letters import add_dead_letter
from telemetry_guard.stores.keys import index_key
from tests.integration.test_prefork import PreforkWorker, scrape, value
from tests.servers import wait_for

DEAD = "telemetry_guard:dead"
EVICTED = "telemetry_guard_dead_letters_evicted_total"


def give_up(task: str, n: int) -> FailureEvent:
    """A give-up of ``task`` with its replay payload, as GuardedTask builds it."""
    return FailureEvent(
        task_name=task, task_id=f"{task}-{n}", attempt=1, max_retries=0,
        exception_type="ValueError", exception_module="builtins", message=f"failure {n}",
        traceback="", severity=Severity.HIGH, decision="give_up", reason="not_retryable",
        args=[n], kwargs={}, timestamp=time.time(),
        replay={"task": task, "id": f"{task}-{n}", "args": [n], "kwargs": {},
                "options": {"queue": "celery"}})


def evicted(task: str) -> float:
    return REGISTRY.get_sample_value(EVICTED, {"task": task}) or 0.0


def dead_task_ids(client: redis.Redis) -> list[str]:
    return [json.loads(fields[b"record"])["task_id"] for _, fields in client.xrange(DEAD)]


@pytest.fixture
def guard(celery_app: Celery, redis_url: str) -> Iterator[TelemetryGuard]:
    guard = TelemetryGuard(celery_app, redis_url=redis_url, tracing=False,
                           dead_letter_maxlen=10, error_log_maxlen=50)
    yield guard
    guard.close()


def test_a_thousand_give_ups_of_one_task_never_evict_another_tasks_dead_letter(
        guard: TelemetryGuard, redis_url: str) -> None:
    """1,200 give-ups of A keep A's newest 10 and B's only one; A's 1,190 evictions counted."""
    client = redis.Redis.from_url(redis_url)
    before = evicted("shop.noisy")
    guard.record(give_up("shop.quiet", 0))
    guard.flush(5.0)
    with capture_logs() as logs:
        for n in range(1, 1201):
            guard.record(give_up("shop.noisy", n))
        guard.flush(10.0)
    ids = dead_task_ids(client)
    assert "shop.quiet-0" in ids
    assert ids == ["shop.quiet-0", *[f"shop.noisy-{n}" for n in range(1191, 1201)]]
    assert client.zcard(index_key(DEAD, "shop.noisy")) == 10
    assert client.zcard(index_key(DEAD, "shop.quiet")) == 1
    assert evicted("shop.noisy") - before == 1190
    assert evicted("shop.quiet") == 0.0
    lines = [e for e in logs if e["event"] == "dead_letter.evicted"]
    assert lines and {e["task_name"] for e in lines} == {"shop.noisy"}
    assert sum(e["count"] for e in lines) == 1190
    assert {e["log_level"] for e in lines} == {"warning"}
    assert client.xlen("telemetry_guard:errors") <= 50 + 100  # the error log keeps its own cap


def test_replayed_or_purged_ids_left_in_the_index_are_dropped_without_counting(
        redis_url: str) -> None:
    """An index id whose entry is gone is trimmed away but is not an eviction."""
    client = redis.Redis.from_url(redis_url)
    first = add_dead_letter(client, DEAD, "t", {"record": "{}"}, 2)
    second = add_dead_letter(client, DEAD, "t", {"record": "{}"}, 2)
    client.xdel(DEAD, first.entry_id)  # removed outside the scripts (an older CLI)
    third = add_dead_letter(client, DEAD, "t", {"record": "{}"}, 2)
    assert (first.evicted, second.evicted, third.evicted) == (0, 0, 0)
    fourth = add_dead_letter(client, DEAD, "t", {"record": "{}"}, 2)
    assert fourth.evicted == 1
    assert [e.decode() for e, _ in client.xrange(DEAD)] == [third.entry_id, fourth.entry_id]
    assert client.zcard(index_key(DEAD, "t")) == 2


def test_the_eviction_counter_of_prefork_children_reaches_the_main_process(
        redis_url: str, tmp_path: Path) -> None:
    """A prefork worker keeping 3 dead letters: 12 give-ups → 9 evictions on /metrics."""
    worker = PreforkWorker(redis_url, tmp_path, max_tasks_per_child=4,
                           extra_env={"TELEMETRY_GUARD_DEAD_LETTER_MAXLEN": "3"})
    producer = Celery("producer", broker=redis_url, backend=redis_url, set_as_current=False)
    try:
        results = [producer.send_task("prefork.fail", args=(i,), queue="prefork")
                   for i in range(12)]
        for result in results:
            with pytest.raises(ValueError):
                result.get(timeout=30)
        wait_for(lambda: value(scrape(worker.port), EVICTED, task="prefork.fail") == 9,
                 timeout=15)
        client = redis.Redis.from_url(redis_url)
        assert client.xlen(DEAD) == 3
    finally:
        producer.close()
        worker.stop()
