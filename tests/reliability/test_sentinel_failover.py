"""A Sentinel failover is a fault the guard survives, without a worker restart.

A real worker keeps the guard's state behind a master, a replica and three sentinels; tasks
keep coming while the master is killed (SIGKILL) and the replica promoted. During the
failover, breaker calls fall back to the per-process store (logged once, counted) and
error-log records wait in the buffer; afterwards everything resumes on the new master: every
failure is in the error log and the dead letters exactly once, and a breaker opened on the
new master by the CLI rejects the worker's next calls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.redis_topologies import SentinelGroup, start_sentinel_group
from tests.servers import RedisServer, free_port, start_redis, stop_process, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ERRORS, DEAD = "telemetry_guard:errors", "telemetry_guard:dead"
#: Tasks sent before, during and after the failover.
BEFORE, DURING, AFTER = 40, 120, 40


@pytest.fixture(scope="module")
def group() -> Iterator[SentinelGroup]:
    started = start_sentinel_group()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def broker() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


def task_ids(client: Any, key: str) -> Counter[int]:
    """How often each task's failure is recorded in ``key``."""
    return Counter(int(json.loads(fields[b"record"])["args"][0])
                   for _, fields in client.xrange(key))


def events(log: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            found.append(json.loads(line))
    return [e for e in found if e.get("event") == name]


def metric(port: int, name: str, labels: str) -> float:
    """A sample of the worker's ``/metrics``; 0 when it has none yet."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    prefix = f"{name}{{{labels}}} "
    return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))


def telemetry_errors(port: int, sink: str) -> float:
    return metric(port, "telemetry_guard_telemetry_errors_total", f'sink="{sink}"')


def test_a_failover_loses_no_record_writes_none_twice_and_needs_no_restart(
        group: SentinelGroup, broker: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TG_FO_BROKER=broker.url,
               TELEMETRY_GUARD_REDIS_URL=group.url,
               TELEMETRY_GUARD_REDIS_OPTIONS=json.dumps(group.options),
               TELEMETRY_GUARD_METRICS_PORT=str(port))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [str(BIN / "celery"), "-A", "tests.apps.failover_app", "worker", "-P", "solo",
             "-l", "WARNING", "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    producer = Celery("producer", broker=broker.url, set_as_current=False)
    try:
        def send(numbers: range, pause: float = 0.0) -> None:
            for n in numbers:
                producer.send_task("fo.work", (n,))
                time.sleep(pause)

        send(range(BEFORE))
        wait_for(lambda: group.client().xlen(DEAD) >= BEFORE, timeout=60)
        assert telemetry_errors(port, "breaker_store") == 0

        # the failover: tasks keep coming while the master dies and the replica takes over
        sender = threading.Thread(target=send, args=(range(BEFORE, BEFORE + DURING), 0.03))
        sender.start()
        old = group.kill_master()
        new = group.wait_for_promotion(old, timeout=30)
        sender.join()
        send(range(BEFORE + DURING, BEFORE + DURING + AFTER))
        assert new != old

        total = BEFORE + DURING + AFTER
        client = group.client()  # the new master
        wait_for(lambda: client.xlen(DEAD) >= total, timeout=60, interval=0.2)
        time.sleep(1.0)  # a record written twice would show by now
        assert task_ids(client, ERRORS) == Counter(range(total))
        assert task_ids(client, DEAD) == Counter(range(total))

        # the breaker fell back once (logged once, counted), then came back to Redis
        assert len(events(log, "breaker.store_unavailable")) == 1
        assert events(log, "breaker.store_unavailable")[0]["fallback"] == "memory"
        assert telemetry_errors(port, "breaker_store") >= 1

        # ... and then reads the new master: a breaker held open there rejects the next calls
        held = subprocess.run(
            [str(BIN / "telemetry-guard"), "-A", "tests.apps.failover_app", "breakers", "open",
             "payments", "--hold"], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=60)
        assert held.returncode == 0, held.stdout + held.stderr
        send(range(total, total + 5))
        # the cached closed view admits one more call; the rest are rejected (such a task
        # waits for its breaker, as any task whose breaker is open does)
        wait_for(lambda: metric(port, "telemetry_guard_breaker_calls_total",
                                'breaker="payments",outcome="rejected"') >= 4, timeout=30)
        assert worker.poll() is None, "the worker kept running"
    finally:
        producer.close()
        stop_process(worker)
