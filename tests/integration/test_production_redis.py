"""The guard's Redis as production runs it: TLS, an ACL user, a unix socket, Sentinel, Cluster.

Each shape is a set of real redis-server processes started here (``tests.redis_topologies``).
On each: eight processes race for one breaker's half-open permits; a real worker's failures
reach the error log and the dead letters, which the CLI lists and replays; the notification
throttle and the retry budget keep their promises. The broker is a separate plain Redis, as
the guard's Redis is configured on its own (``telemetry_guard_redis_url`` and
``telemetry_guard_redis_options``, here from the environment).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from telemetry_guard.breaker.redis_hash import breaker_keys
from telemetry_guard.breaker.redis_store import RedisBreakerStore
from telemetry_guard.breaker.scrape import read_states
from telemetry_guard.breaker.state import BreakerConfig
from telemetry_guard.notify.throttle import NotificationThrottle
from telemetry_guard.stores.budget import BudgetConfig, RetryBudget
from telemetry_guard.stores.keys import index_key
from telemetry_guard.stores.redis_client import is_cluster, new_redis_client, use_redis_options
from tests.breaker_race import race_once
from tests.redis_topologies import (
    start_acl_redis,
    start_cluster,
    start_sentinel_group,
    start_tls_redis,
    start_unix_redis,
)
from tests.servers import RedisServer, start_redis, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ERRORS, DEAD = "telemetry_guard:errors", "telemetry_guard:dead"

SHAPES: dict[str, Callable[[], Any]] = {
    "tls": start_tls_redis,
    "acl": start_acl_redis,
    "unix": start_unix_redis,
    "sentinel": start_sentinel_group,
    "cluster": start_cluster,
}


@pytest.fixture(scope="module", params=list(SHAPES))
def shape(request: pytest.FixtureRequest) -> Iterator[Any]:
    """One Redis shape, its URL and options registered as the guard registers them."""
    started = SHAPES[request.param]()
    try:
        use_redis_options(started.url, started.options)
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def broker() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@dataclass
class Fleet:
    """A worker of ``tests.apps.cli_app`` whose guard uses the shape; the CLI likewise."""

    env: dict[str, str]
    app: Celery

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "telemetry-guard"), "-A", "tests.apps.cli_app", *argv],
                              cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def fleet(shape: Any, broker: RedisServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TG_TEST_BROKER=broker.url,
               TELEMETRY_GUARD_REDIS_URL=shape.url,
               TELEMETRY_GUARD_REDIS_OPTIONS=json.dumps(shape.options))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [str(BIN / "celery"), "-A", "tests.apps.cli_app", "worker", "-P", "solo", "-Q",
             "cli", "-l", "WARNING", "--without-heartbeat", "--without-gossip",
             "--without-mingle"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    app = Celery("producer", broker=broker.url, set_as_current=False)
    try:
        yield Fleet(env, app)
    finally:
        app.close()
        stop_process(worker)


def test_eight_processes_share_exactly_the_half_open_permits(shape: Any) -> None:
    for repetition in range(3):
        race_once(shape.url, f"race-{repetition}")


def test_failures_reach_the_error_log_and_dead_letters_which_the_cli_lists_and_replays(
        fleet: Fleet, shape: Any) -> None:
    client = new_redis_client(shape.url)
    sent = [str(fleet.app.send_task("cli.charge", (n, "ledger"), queue="cli").id)
            for n in range(3)]
    sent.append(str(fleet.app.send_task("cli.archive", (9,), queue="cli").id))
    wait_for(lambda: client.xlen(DEAD) >= 4, timeout=60)
    # written by the script (the task's index beside the stream, in the stream's slot)
    assert client.exists(index_key(ERRORS, "cli.charge"))

    listed = fleet.cli("errors", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(r["task_id"] for r in records) == sorted(sent)
    assert {r["exception_type"] for r in records} == {"LedgerCorrupt", "ValueError"}
    only = fleet.cli("errors", "list", "--task", "cli.archive", "--json")
    assert [json.loads(line)["task_id"] for line in only.stdout.splitlines()] == [sent[-1]]
    stats = fleet.cli("errors", "stats", "--json")
    assert {(row["task"], row["count"]) for row in map(json.loads, stats.stdout.splitlines())} \
        == {("cli.charge", 3), ("cli.archive", 1)}

    dead = fleet.cli("dead", "list", "--json")
    assert dead.returncode == 0, dead.stderr
    assert sorted(json.loads(line)["task_id"] for line in dead.stdout.splitlines()) == sorted(sent)
    replayed = fleet.cli("dead", "replay", "--task", "cli.archive", "--yes", "--json")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert client.xlen(DEAD) == 3


def test_the_throttle_and_the_retry_budget_keep_their_promises(shape: Any) -> None:
    throttle = NotificationThrottle(shape.url, key_prefix="telemetry_guard:", window=60)
    assert throttle.acquire("fp-1", "mail-a") is True
    assert throttle.acquire("fp-1", "mail-b") is False  # one mail per fingerprint per window
    assert throttle.acquire("fp-1", "mail-a") is True  # the same mail, redelivered
    assert [throttle.suppress("fp-1") for _ in range(3)] == [1, 2, 3]
    throttle.settle("fp-1", 2)
    assert throttle.pending("fp-1") == 1

    budget = RetryBudget(shape.url, BudgetConfig(ratio=0.1, min_retries_per_second=0.0,
                                                 ttl=3600.0))
    try:
        for _ in range(25):
            budget.deposit("shop.charge")
        budget.flush()
        granted = [budget.withdraw("shop.charge") for _ in range(4)]
    finally:
        budget.close()
    assert granted == [True, True, False, False]  # 10 % of 25 first attempts


def test_breakers_list_finds_every_breaker_on_every_node(fleet: Fleet, shape: Any) -> None:
    """The CLI's scan covers every master of a cluster (names spread over many slots)."""
    names = [f"pay-{n}" for n in range(12)]
    stores = [RedisBreakerStore(name, BreakerConfig(reset_timeout=600), redis_url=shape.url)
              for name in names]
    for store in stores:
        store.force_open()
    assert read_states(stores) == dict.fromkeys(names, "open")  # the metrics scrape's read
    listed = fleet.cli("breakers", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["breaker"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert {name: rows[name]["state"] for name in names} == dict.fromkeys(names, "open")
    client = new_redis_client(shape.url)
    if is_cluster(client):
        homes = {client.get_node_from_key(breaker_keys("telemetry_guard:", n)[0]).name
                 for n in names}
        assert len(homes) == 3
