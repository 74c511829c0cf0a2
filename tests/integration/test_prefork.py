"""A real ``celery worker -P prefork`` subprocess with prometheus_client multiprocess mode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from telemetry_guard import TaskMemoryError
from tests.servers import free_port, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[2]


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the worker's /metrics, keyed by name and labels."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


class PreforkWorker:
    def __init__(self, broker: str, tmp: Path, max_tasks_per_child: int,
                 extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.multiproc = tmp / "prom"
        self.multiproc.mkdir()
        (self.multiproc / "counter_999999.db").write_bytes(b"")  # left over by an earlier run
        env = dict(os.environ, TG_TEST_BROKER=broker, PROMETHEUS_MULTIPROC_DIR=str(self.multiproc),
                   TELEMETRY_GUARD_METRICS_PORT=str(self.port),
                   TG_TEST_MAX_TASKS_PER_CHILD=str(max_tasks_per_child),
                   PYTHONPATH=str(ROOT), **(extra_env or {}))
        self.log = (tmp / "worker.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.apps.prefork_app", "worker",
             "-P", "prefork", "-c", "2", "-Q", "prefork", "-l", "WARNING",
             "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._serving, timeout=30)

    def _serving(self) -> bool:
        assert self.proc.poll() is None, "worker exited"
        try:
            scrape(self.port)
            return True
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    app = Celery("producer", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.task_default_queue = "prefork"
    yield app
    app.close()


@pytest.fixture
def prefork(redis_url: str, tmp_path: Path) -> Iterator[PreforkWorker]:
    worker = PreforkWorker(redis_url, tmp_path, max_tasks_per_child=5)
    yield worker
    worker.stop()


def test_counts_from_all_children_add_up_and_dead_children_files_are_merged(
        prefork: PreforkWorker, producer: Celery) -> None:
    """20 failures over churning children: the main process's /metrics counts all 20."""
    results = [producer.send_task("prefork.fail", args=(i,)) for i in range(20)]
    for result in results:
        with pytest.raises(ValueError):
            result.get(timeout=30)

    def counted() -> float:
        return value(scrape(prefork.port), "telemetry_guard_task_failures_total",
                     task="prefork.fail", exception="ValueError", severity="low")

    wait_for(lambda: counted() == 20, timeout=15)
    # A scrape folds the files of children that exited before it; a child churning out
    # during the scrape keeps its file until the next one: it is alive before or after.
    live = children(prefork.proc.pid) | {prefork.proc.pid}
    samples = scrape(prefork.port)
    live |= children(prefork.proc.pid)
    assert value(samples, "telemetry_guard_task_giveups_total", task="prefork.fail",
                 exception="ValueError", severity="low") == 20
    assert value(samples, "telemetry_guard_task_runtime_seconds_count", task="prefork.fail",
                 outcome="failure") == 20

    pids = {name.rsplit("_", 1)[-1][:-3] for name in os.listdir(prefork.multiproc)}
    assert pids - {str(p) for p in live} == {"merged"}, sorted(os.listdir(prefork.multiproc))
    assert len(os.listdir(prefork.multiproc)) <= 2 * (len(live) + 1)


def test_child_killed_mid_task_is_one_high_worker_lost_failure(
        prefork: PreforkWorker, producer: Celery, redis_url: str) -> None:
    """SIGKILL of a prefork child mid-task: one WorkerLostError failure of severity high."""
    result = producer.send_task("prefork.hang", args=("hang-pid",))
    client = redis.Redis.from_url(redis_url)
    pid = int(wait_for(lambda: client.get("hang-pid"), timeout=20))
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(Exception) as raised:
        result.get(timeout=30)
    assert type(raised.value).__name__ == "WorkerLostError"

    def counted() -> float:
        return value(scrape(prefork.port), "telemetry_guard_task_failures_total",
                     task="prefork.hang", exception="WorkerLostError", severity="high")

    wait_for(lambda: counted() == 1, timeout=10)
    samples = scrape(prefork.port)
    assert value(samples, "telemetry_guard_task_giveups_total", task="prefork.hang",
                 exception="WorkerLostError", severity="high") == 1


def test_time_limits_are_high_failures_reported_by_child_and_main_process(
        prefork: PreforkWorker, producer: Celery) -> None:
    """A soft time limit (seen in the child) and a hard one (seen by the main process) are HIGH."""
    soft = producer.send_task("prefork.soft_limit")
    hard = producer.send_task("prefork.hard_limit")
    with pytest.raises(Exception) as soft_raised:
        soft.get(timeout=30)
    with pytest.raises(Exception) as hard_raised:
        hard.get(timeout=30)
    assert type(soft_raised.value).__name__ == "SoftTimeLimitExceeded"
    assert type(hard_raised.value).__name__ == "TimeLimitExceeded"

    def counted() -> tuple[float, float]:
        samples = scrape(prefork.port)
        return (
            value(samples, "telemetry_guard_task_giveups_total", task="prefork.soft_limit",
                  exception="SoftTimeLimitExceeded", severity="high"),
            value(samples, "telemetry_guard_task_giveups_total", task="prefork.hard_limit",
                  exception="TimeLimitExceeded", severity="high"),
        )

    wait_for(lambda: counted() == (1, 1), timeout=10)


def test_retry_with_an_unpicklable_exception_does_not_crash_loop_the_worker(
        prefork: PreforkWorker, producer: Celery) -> None:
    """An unpicklable retryable exception is retried through a picklable stand-in."""
    assert producer.send_task("prefork.unpicklable").get(timeout=30) == "recovered"
    wait_for(lambda: value(scrape(prefork.port), "telemetry_guard_task_retries_total",
                           task="prefork.unpicklable",
                           exception="LockedConnectionError") == 2, timeout=10)


def test_memory_error_callback_recycles_the_pool_child(
        prefork: PreforkWorker, producer: Celery) -> None:
    """recycle_on_memory_error: the child that hit MemoryError exits and the pool replaces it."""
    before = children(prefork.proc.pid)
    assert len(before) == 2
    with pytest.raises(TaskMemoryError):
        producer.send_task("prefork.out_of_memory").get(timeout=30)

    def replaced() -> bool:
        now = children(prefork.proc.pid)
        return len(now) == 2 and len(now - before) == 1

    wait_for(replaced, timeout=15)
    assert value(scrape(prefork.port), "telemetry_guard_task_failures_total",
                 task="prefork.out_of_memory", exception="MemoryError", severity="critical") == 1
    assert producer.send_task("prefork.pid").get(timeout=30) in children(prefork.proc.pid)


def test_child_killed_mid_task_with_retry_on_worker_lost_is_recorded_once_and_runs_again(
        prefork: PreforkWorker, producer: Celery, redis_url: str) -> None:
    """acks_late + retry_on_worker_lost: one HIGH WorkerLostError retry, then success."""
    result = producer.send_task("prefork.hang_once", args=("hang-once",))
    client = redis.Redis.from_url(redis_url)
    pid = int(wait_for(lambda: client.get("hang-once"), timeout=20))
    os.kill(pid, signal.SIGKILL)
    assert result.get(timeout=30) == "ran again"
    samples = scrape(prefork.port)
    assert value(samples, "telemetry_guard_task_failures_total", task="prefork.hang_once",
                 exception="WorkerLostError", severity="high") == 1
    assert value(samples, "telemetry_guard_task_retries_total", task="prefork.hang_once",
                 exception="WorkerLostError") == 1
    assert value(samples, "telemetry_guard_task_giveups_total", task="prefork.hang_once",
                 exception="WorkerLostError", severity="high") == 0


def test_child_killed_mid_task_with_reject_on_worker_lost_is_recorded_once_and_requeued(
        prefork: PreforkWorker, producer: Celery, redis_url: str) -> None:
    """acks_late + reject_on_worker_lost: Celery requeues silently; we record one HIGH retry."""
    result = producer.send_task("prefork.hang_requeued", args=("hang-requeued",))
    client = redis.Redis.from_url(redis_url)
    pid = int(wait_for(lambda: client.get("hang-requeued"), timeout=20))
    os.kill(pid, signal.SIGKILL)
    assert result.get(timeout=30) == "ran again"
    samples = scrape(prefork.port)
    assert value(samples, "telemetry_guard_task_failures_total", task="prefork.hang_requeued",
                 exception="WorkerLostError", severity="high") == 1
    assert value(samples, "telemetry_guard_task_retries_total", task="prefork.hang_requeued",
                 exception="WorkerLostError") == 1
    assert value(samples, "telemetry_guard_task_giveups_total", task="prefork.hang_requeued",
                 exception="WorkerLostError", severity="high") == 0
