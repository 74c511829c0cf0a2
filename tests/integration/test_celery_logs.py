"""Celery's own worker log (``raised unexpected``, ``retry``) is scrubbed by the guard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery

from tests.servers import stop_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
SECRET = "tok-9f8e7d6c5b4a39281706"


def run_worker(redis_url: str, tmp_path: Path, pool: str, **env: str) -> str:
    """Run the app's three tasks on a real worker subprocess; its whole log (stdout+stderr)."""
    log_path = tmp_path / f"worker-{pool}.log"
    environ = dict(os.environ, TG_TEST_BROKER=redis_url, TG_TEST_SECRET=SECRET,
                   PYTHONPATH=str(ROOT), **env)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.apps.celery_log_app", "worker",
             "-P", pool, "-c", "1", "-Q", "celery-logs", "-l", "INFO",
             "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)
        producer = Celery("producer", broker=redis_url, backend=redis_url, set_as_current=False)
        producer.conf.task_default_queue = "celery-logs"
        try:
            guarded = producer.send_task("logs.guarded", args=(7,),
                                         kwargs={"password": "hunter2-canary"})
            plain = producer.send_task(
                "logs.plain", args=(f"https://app:pa/ss{SECRET}@db.internal/prod",),
                kwargs={"api_key": SECRET})
            ok = producer.send_task("logs.ok", args=(3,))
            for result in (guarded, plain):
                with pytest.raises(OSError):
                    result.get(timeout=30)
            assert ok.get(timeout=30) == 3
            wait_for(lambda: "succeeded in" in log_path.read_text(), timeout=10)
        finally:
            stop_process(proc)
            producer.close()
    return log_path.read_text()


@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_the_workers_own_failure_and_retry_lines_carry_no_secret(
        redis_url: str, tmp_path: Path, pool: str) -> None:
    """``raised unexpected`` and ``retry`` lines keep their shape and traceback, not the secret."""
    log = run_worker(redis_url, tmp_path, pool)
    assert "Task logs.guarded[" in log and "retry: Retry in" in log
    assert "Task logs.plain[" in log and "raised unexpected: OSError(" in log
    assert "Traceback (most recent call last)" in log and 'raise OSError(f"cannot reach' in log
    assert "Task logs.ok[" in log and "succeeded in" in log and ": 3" in log
    for secret in (SECRET, "hunter2-canary", "pa/ss"):
        assert secret not in log
    assert "[REDACTED]" in log


def test_the_scrubbing_of_celerys_log_can_be_turned_off(redis_url: str, tmp_path: Path) -> None:
    """``TELEMETRY_GUARD_REDACT_CELERY_LOGS=false`` leaves Celery's lines as Celery wrote them."""
    log = run_worker(redis_url, tmp_path, "solo", TELEMETRY_GUARD_REDACT_CELERY_LOGS="false")
    assert SECRET in log and "raised unexpected: OSError(" in log
