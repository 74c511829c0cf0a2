"""A real ``celery worker -P prefork`` whose children export metrics over OTLP/HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from tests.otlp_receiver import OtlpReceiver
from tests.servers import stop_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
FAILURES = "telemetry_guard_task_failures"
FAILED = {"task": "otlp.fail", "exception": "ValueError", "severity": "low"}


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[OtlpReceiver]:
    """The collector the children export to: answering, or ``"error"`` (503 to every post)."""
    server = OtlpReceiver(getattr(request, "param", "ok"))
    yield server
    server.stop()


@pytest.fixture
def worker(redis_url: str, receiver: OtlpReceiver, tmp_path: Path) -> Iterator[subprocess.Popen]:
    """``celery worker -P prefork -c 2`` of tests/apps/otlp_app.py; a child is replaced after
    every 4 tasks, so counts come from children that have exited too."""
    env = dict(os.environ, TG_TEST_BROKER=redis_url, TG_TEST_OTLP_ENDPOINT=receiver.endpoint,
               TG_TEST_MAX_TASKS_PER_CHILD="4", PYTHONPATH=str(ROOT))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.apps.otlp_app", "worker",
         "-P", "prefork", "-c", "2", "-Q", "otlp", "-l", "WARNING",
         "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = tmp_path / "worker.log"  # type: ignore[attr-defined]
    yield proc
    stop_process(proc)
    log.close()


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    app = Celery("producer", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.task_default_queue = "otlp"
    yield app
    app.close()


def test_failures_exported_by_each_child_add_up_to_exactly_the_tasks_that_failed(
        worker: subprocess.Popen, producer: Celery, receiver: OtlpReceiver) -> None:
    """N failing tasks over churning children: each child's latest cumulative count, summed
    over the instance ids, is exactly N; nothing comes from the main process."""
    n = 10
    results = [producer.send_task("otlp.fail", args=(i,)) for i in range(n)]
    for result in results:
        with pytest.raises(ValueError):
            result.get(timeout=60)

    wait_for(lambda: receiver.total(FAILURES) >= n, timeout=20)
    wait_for(lambda: _runtime_count(receiver) >= n, timeout=20)
    assert receiver.total(FAILURES) == n
    assert receiver.total(FAILURES, **FAILED) == n
    assert {frozenset(p.attributes.items()) for p in receiver.received(FAILURES)} == {
        frozenset(FAILED.items())}
    assert receiver.total("telemetry_guard_task_giveups", **FAILED) == n
    assert _runtime_count(receiver) == n
    assert not receiver.errors

    instances = {p.instance for p in receiver.received(FAILURES)}
    assert len(instances) >= 3, instances  # 10 tasks, 4 per child: at least three children
    assert f"{socket.gethostname()}:{worker.pid}" not in {p.instance for p in receiver.points}

    states = {(p.attributes["state"], p.value) for p in receiver.received(
        "telemetry_guard_breaker_state") if p.attributes["breaker"] == "otlp.payments"}
    assert states == {("closed", 1.0), ("open", 0.0), ("half_open", 0.0)}
    assert "metrics.provider_inherited" not in worker.log_path.read_text()  # type: ignore[attr-defined]


@pytest.mark.parametrize("receiver", ["error"], indirect=True)
def test_a_collector_that_refuses_every_export_changes_no_task_outcome(
        worker: subprocess.Popen, producer: Celery, receiver: OtlpReceiver) -> None:
    """Exports fail (503) on the children's exporter threads; tasks fail and succeed as
    they would without telemetry."""
    failing = [producer.send_task("otlp.fail", args=(i,)) for i in range(3)]
    for result in failing:
        with pytest.raises(ValueError, match="failure"):
            result.get(timeout=60)
    wait_for(lambda: receiver.requests > 0, timeout=20)
    assert isinstance(producer.send_task("otlp.pid").get(timeout=30), int)
    assert receiver.points == []


def _runtime_count(receiver: OtlpReceiver) -> int:
    """Task runs of otlp.fail in the runtime histogram, summed over instances."""
    return sum(p.count for p in receiver.latest("telemetry_guard_task_runtime_seconds").values()
               if p.attributes == {"task": "otlp.fail", "outcome": "failure"})
