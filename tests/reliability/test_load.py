"""Load: tens of thousands of tasks, one in five failing, through two real prefork workers.

Two ``celery worker -P prefork -c 2`` subprocesses (tests/apps/load_app.py), each with its
own ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` port, consume one queue of the private
redis-server, which is also their telemetry Redis. The workload's truth is known: task
``n`` fails when ``n % 5 == 0``. What is checked:

- every failure is counted exactly once: the failures (and give-ups) summed over every
  child of both workers equal the workload's failures; so do the ``task.failed`` log lines
  and the ``entries-added`` of the error-log and dead-letter streams, within seconds while
  the workers run and still after they stopped (and flushed);
- the dead-letter stream holds exactly the failing task's retention
  (``TELEMETRY_GUARD_DEAD_LETTER_MAXLEN``, per task, exact);
- the error-log stream stays within its cap during the whole run: ``XLEN`` sampled twice
  a second is at most ``maxlen + stream-node-max-entries``. ``MAXLEN ~`` trims whole
  stream nodes only, so up to one node's worth of entries (``stream-node-max-entries``,
  100 by default) may remain above the cap: that is the slack;
- (full run) the workers' memory stays flat: the RSS of each worker's main process plus
  its children, read from /proc, grows by less than 10 % from the moment the first 10,000
  of the 50,000 measured tasks are done to any moment of the last 10,000.

Memory is measured after a warm-up of 30,000 tasks (same task, same failure rate). A pool
child's RSS climbs during its first ~1,500 failures (about 180 MB from 100 MB here) and is
then flat; live Python objects do not grow meanwhile (about 79,000 GC-tracked objects in a
child after 400 tasks and after 20,000), and a worker running the same task as a plain
Celery task (no telemetry_guard) climbs the same way. Without the warm-up, the first
10,000 tasks of two workers × two children (2,500 per child) end in the middle of that
climb, and the comparison would measure the allocator's warm-up, not a leak; the figure
is printed all the same ("from the start").

Publishing uses ``app.send_task`` in a loop over one producer connection (about 4,000
messages/s here); all messages are queued before the workers start, so that "tasks done"
can be read cheaply from the queue's length. Figures are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery

from telemetry_guard.core.classify import Severity
from telemetry_guard.core.events import FailureEvent
from telemetry_guard.sinks.errorlog import ErrorLogSink
from tests.integration.test_prefork import scrape
from tests.servers import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
TASK = "load.work"  # tests.apps.load_app.TASK (never imported here: it would wire a guard)
FAIL_EVERY = 5  # tests.apps.load_app.FAIL_EVERY
WORKERS = 2
CONCURRENCY = 2
#: The RSS growth allowed between the end of the first window and the last window.
MAX_RSS_GROWTH = 0.10
SAMPLE_INTERVAL = 0.5


@dataclass(frozen=True)
class Workload:
    """Measured tasks, warm-up tasks before them, the error log's cap, the memory window
    (None: memory not checked) and how long processing may take."""

    tasks: int
    warmup: int
    maxlen: int
    memory_window: int | None
    timeout: float

    @property
    def total(self) -> int:
        return self.warmup + self.tasks

    @property
    def failures(self) -> int:
        return len(range(0, self.total, FAIL_EVERY))


LIGHT = Workload(tasks=2_000, warmup=0, maxlen=200, memory_window=None, timeout=120)
FULL = Workload(tasks=50_000, warmup=30_000, maxlen=5_000, memory_window=10_000, timeout=420)


def rss_kib(pid: int) -> int:
    """Resident set size of one process, in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def descendants(pid: int) -> set[int]:
    """The children of every thread of ``pid`` (a prefork worker's pool processes)."""
    found: set[int] = set()
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found.update(int(p) for p in (task / "children").read_text().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


class LoadWorker:
    """``celery -A tests.apps.load_app worker -P prefork -c 2`` with its own metrics dir."""

    def __init__(self, name: str, broker: str, queue: str, prefix: str, maxlen: int,
                 tmp: Path) -> None:
        self.port = free_port()
        self.multiproc = tmp / f"prom-{name}"
        self.multiproc.mkdir()
        self.log_path = tmp / f"{name}.log"
        env = dict(os.environ, TG_TEST_BROKER=broker, PYTHONPATH=str(ROOT),
                   PROMETHEUS_MULTIPROC_DIR=str(self.multiproc),
                   TELEMETRY_GUARD_METRICS_PORT=str(self.port),
                   TELEMETRY_GUARD_METRICS_ADDRESS="127.0.0.1",
                   TELEMETRY_GUARD_KEY_PREFIX=prefix,
                   TELEMETRY_GUARD_ERROR_LOG_MAXLEN=str(maxlen),
                   TELEMETRY_GUARD_DEAD_LETTER_MAXLEN=str(maxlen))
        # O_APPEND: the main process and its children write whole lines to one file.
        self.log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.apps.load_app", "worker",
             "-P", "prefork", "-c", str(CONCURRENCY), "-Q", queue, "-n", f"{name}@localhost",
             "-l", "WARNING", "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def serving(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()[-4000:]
        try:
            scrape(self.port)
            return True
        except OSError:
            return False

    def rss_kib(self) -> int:
        """RSS of the main process plus its pool children."""
        return sum(rss_kib(pid) for pid in {self.proc.pid} | descendants(self.proc.pid))

    def counts(self) -> dict[str, float]:
        """This worker's task counts, summed over every label set and child."""
        totals = {"failures": 0.0, "giveups": 0.0, "retries": 0.0, "success": 0.0,
                  "failure_runs": 0.0}
        for (name, labels), value in scrape(self.port).items():
            labels_d = dict(labels)
            if labels_d.get("task") not in (TASK, None):
                continue
            if name == "telemetry_guard_task_failures_total":
                totals["failures"] += value
            elif name == "telemetry_guard_task_giveups_total":
                totals["giveups"] += value
            elif name == "telemetry_guard_task_retries_total":
                totals["retries"] += value
            elif name == "telemetry_guard_task_runtime_seconds_count":
                key = "success" if labels_d.get("outcome") == "success" else "failure_runs"
                totals[key] += value
        return totals

    def failed_log_lines(self) -> int:
        """``task.failed`` events in this worker's JSON log lines."""
        count = 0
        with self.log_path.open() as lines:
            for line in lines:
                if line.startswith("{") and '"task.failed"' in line:
                    count += json.loads(line)["event"] == "task.failed"
        return count

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def wait_until(probe: Callable[[], object], expected: object, timeout: float = 30.0) -> None:
    """Poll ``probe`` until it returns ``expected``; fail showing its last value."""
    deadline = time.monotonic() + timeout
    while (value := probe()) != expected:
        assert time.monotonic() < deadline, f"{value!r} != {expected!r} after {timeout} s"
        time.sleep(0.1)


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    app = Celery("load-producer", broker=redis_url, set_as_current=False)
    yield app
    app.close()


def publish(producer: Celery, queue: str, tasks: int) -> float:
    """Queue ``tasks`` messages over one producer connection; the seconds it took."""
    started = time.perf_counter()
    with producer.producer_or_acquire() as connection:
        for n in range(tasks):
            producer.send_task(TASK, args=(n,), queue=queue, producer=connection)
    return time.perf_counter() - started


def run_workload(workload: Workload, redis_url: str, producer: Celery, tmp_path: Path,
                 run_id: str) -> None:
    queue, prefix = f"load-{run_id}", f"load-{run_id}:"
    client = redis.Redis.from_url(redis_url)
    errors_key, dead_key = prefix + "errors", prefix + "dead"
    slack = int(client.config_get("stream-node-max-entries")["stream-node-max-entries"])
    failures, window = workload.failures, workload.memory_window

    def entries_added(key: str) -> int:
        return int(client.xinfo_stream(key)["entries-added"]) if client.exists(key) else 0

    publish_s = publish(producer, queue, workload.total)
    assert client.llen(queue) == workload.total

    workers = [LoadWorker(f"load{i}-{run_id}", redis_url, queue, prefix, workload.maxlen,
                          tmp_path) for i in range(WORKERS)]
    rss_at: dict[str, list[int]] = {}  # "start": after 10,000 of all; "base": of the measured
    last_window = [0] * WORKERS
    try:
        for worker in workers:
            wait_for(worker.serving, timeout=60, interval=0.2)
        started = time.perf_counter()
        max_xlen = 0
        while True:
            remaining = int(client.llen(queue))
            done = workload.total - remaining
            measured = done - workload.warmup
            max_xlen = max(max_xlen, int(client.xlen(errors_key)))
            if window is not None:
                rss = [w.rss_kib() for w in workers]
                if done >= window:
                    rss_at.setdefault("start", rss)
                if measured >= window:
                    rss_at.setdefault("base", rss)
                if measured >= workload.tasks - window:
                    last_window = [max(a, b) for a, b in zip(last_window, rss, strict=True)]
            if remaining == 0:
                break
            assert time.perf_counter() - started < workload.timeout, (
                f"{done}/{workload.total} done in {workload.timeout} s")
            for worker in workers:
                assert worker.proc.poll() is None, worker.log_path.read_text()[-4000:]
            time.sleep(SAMPLE_INTERVAL)

        def all_counted() -> bool:
            counts = [w.counts() for w in workers]
            return sum(c["success"] + c["failure_runs"] for c in counts) >= workload.total

        wait_for(all_counted, timeout=60, interval=0.2)
        process_s = time.perf_counter() - started
        counts = [w.counts() for w in workers]
        # Written while the workers run (the writer's batch interval is 0.1 s), not at exit.
        wait_until(lambda: (entries_added(errors_key), entries_added(dead_key)),
                   (failures, failures), timeout=10.0)
        added_while_running = entries_added(errors_key)
        max_xlen = max(max_xlen, int(client.xlen(errors_key)))
        if window is not None:
            rss = [w.rss_kib() for w in workers]
            last_window = [max(a, b) for a, b in zip(last_window, rss, strict=True)]
    finally:
        for worker in workers:
            worker.stop()

    # Stopping flushes (worker_process_shutdown): nothing is written twice.
    total = {key: sum(c[key] for c in counts) for key in counts[0]}
    log_lines = [w.failed_log_lines() for w in workers]
    print(f"\nload {workload.total} tasks ({workload.warmup} warm-up, {failures} failing) "
          f"over {WORKERS} prefork workers -c {CONCURRENCY}: published in {publish_s:.1f} s "
          f"({workload.total / publish_s:.0f}/s), processed in {process_s:.1f} s "
          f"({workload.total / process_s:.0f}/s)")
    print(f"per worker: {[c['failures'] + c['success'] for c in counts]} runs, "
          f"{[c['failures'] for c in counts]} failures; task.failed lines {log_lines}")
    print(f"error log: max XLEN {max_xlen} (cap {workload.maxlen} + slack {slack}), "
          f"final XLEN {client.xlen(errors_key)}, dead XLEN {client.xlen(dead_key)}; "
          f"entries-added {added_while_running} while running, "
          f"{entries_added(errors_key)} after stopping")

    assert all(c["failures"] + c["success"] > 0 for c in counts), counts  # both did work
    assert total["failures"] == failures, total
    assert total["giveups"] == failures, total
    assert total["failure_runs"] == failures, total
    assert total["success"] == workload.total - failures, total
    assert total["retries"] == 0, total
    assert sum(log_lines) == failures
    assert entries_added(errors_key) == failures
    assert entries_added(dead_key) == failures
    assert max_xlen <= workload.maxlen + slack
    # Dead letters: the one failing task keeps exactly its own retention (not approximate).
    assert client.xlen(dead_key) == min(failures, workload.maxlen)
    assert client.xlen(errors_key) >= workload.maxlen  # trimmed, never below the cap
    if window is not None:
        def growth(first: list[int]) -> list[str]:
            pairs = zip(first, last_window, strict=True)
            return [f"{last / base - 1:+.1%}" for base, last in pairs]

        print(f"RSS KiB per worker (main + children): after the first {window} of all "
              f"{rss_at['start']}, after the first {window} measured {rss_at['base']}, "
              f"max over the last {window} {last_window}; growth from the start "
              f"{growth(rss_at['start'])}, from the first measured {growth(rss_at['base'])}")
        assert all(last < base * (1 + MAX_RSS_GROWTH)
                   for base, last in zip(rss_at["base"], last_window, strict=True)), rss_at


def test_two_thousand_tasks_over_two_prefork_workers_are_each_counted_once(
        redis_url: str, producer: Celery, tmp_path: Path, run_id: str) -> None:
    """2,000 tasks, 400 failing: 400 failures in metrics, logs and error log; XLEN capped."""
    run_workload(LIGHT, redis_url, producer, tmp_path, run_id)


@pytest.mark.slow
def test_fifty_thousand_tasks_are_each_counted_once_with_capped_log_and_flat_memory(
        redis_url: str, producer: Celery, tmp_path: Path, run_id: str) -> None:
    """50,000 tasks after 30,000 of warm-up, 20 % failing: each failure counted once, XLEN
    within cap + slack, RSS growth over the measured tasks under 10 %."""
    run_workload(FULL, redis_url, producer, tmp_path, run_id)


def give_up_event(n: int) -> FailureEvent:
    """A given-up failure with replay data: two error-log entries (errors and dead)."""
    return FailureEvent(
        task_name=TASK, task_id=f"trickle-{n}", attempt=1, max_retries=0,
        exception_type="OrderRejected", exception_module="tests.apps.load_app",
        message=f"order {n} rejected", traceback="", severity=Severity.LOW, decision="give_up",
        reason="not_retryable", args=[n], replay={"task": TASK, "id": f"trickle-{n}",
                                                  "args": [n], "kwargs": {}})


def test_a_trickle_of_give_ups_reaches_the_error_log_without_waiting_for_a_full_batch(
        redis_url: str, run_id: str) -> None:
    """An idle writer, then three give-ups: each in Redis within a second, not at exit.

    ``WAKE_AT`` promises that fewer records than a batch wait at most the batch interval
    (0.1 s). A give-up appends two entries (errors and dead) before the writer is woken, and
    only a buffer length of exactly 1 or ``WAKE_AT`` wakes it.
    """
    prefix = f"trickle-{run_id}:"
    sink = ErrorLogSink(redis_url, key_prefix=prefix, maxlen=1000)
    client = redis.Redis.from_url(redis_url)
    try:
        sink.on_failure(give_up_event(0))
        sink.flush(5.0)  # the writer thread exists and is idle
        assert client.xlen(prefix + "errors") == 1
        for n in range(1, 4):
            sink.on_failure(give_up_event(n))
            time.sleep(0.5)
        wait_until(lambda: (client.xlen(prefix + "errors"), client.xlen(prefix + "dead")),
                   (4, 4), timeout=1.0)
    finally:
        sink.close()


def retry_event(n: int) -> FailureEvent:
    """A retried failure: one error-log entry."""
    return FailureEvent(
        task_name=TASK, task_id=f"mix-{n}", attempt=1, max_retries=3,
        exception_type="ConnectionError", exception_module="builtins", message="reset",
        traceback="", severity=Severity.MEDIUM, decision="retry", delay_s=1.0, args=[n])


def test_a_mix_of_retries_and_give_ups_is_written_not_dropped_as_buffer_overflow(
        redis_url: str, run_id: str) -> None:
    """Give-up, retry, then give-ups into an idle writer: all written, none dropped.

    The buffer's length goes 2, 3, 5, 7, ...: never exactly 1 or ``WAKE_AT`` (200), so
    nothing wakes the writer and, with Redis healthy, records pile up until the buffer is
    full and the rest are dropped as ``errorlog_overflow``.
    """
    prefix = f"mix-{run_id}:"
    reported: list[str] = []
    sink = ErrorLogSink(redis_url, key_prefix=prefix, maxlen=10_000, buffer_size=300,
                        report_error=lambda name, exc: reported.append(name))
    client = redis.Redis.from_url(redis_url)
    try:
        sink.on_failure(retry_event(0))
        sink.flush(5.0)  # the writer thread exists and is idle
        sink.on_failure(give_up_event(1))
        sink.on_failure(retry_event(2))
        for n in range(3, 203):  # 200 give-ups: 400 entries, a few milliseconds apart
            sink.on_failure(give_up_event(n))
            time.sleep(0.002)
        wait_until(lambda: (client.xlen(prefix + "errors"), sorted(set(reported))),
                   (203, []), timeout=2.0)
    finally:
        sink.close()
