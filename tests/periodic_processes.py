"""Real ``celery beat`` and ``celery worker`` subprocesses of the periodic test app
(``tests.apps.periodic_app``) on a private Redis: beat serves ``/metrics`` on
``metrics_port`` (``beat_metrics_port``), the prefork worker on ``worker_metrics_port``."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port, stop_process

ROOT = Path(__file__).resolve().parents[1]
APP = "tests.apps.periodic_app"


class Processes:
    """Beat and worker subprocesses of the periodic test app, started and stopped at will."""

    def __init__(self, broker: str, tmp: Path) -> None:
        self.tmp = tmp
        self.metrics_port = free_port()
        self.worker_metrics_port = free_port()
        (tmp / "prom").mkdir()
        self.env = dict(os.environ, TG_TEST_BROKER=broker, PYTHONPATH=str(ROOT),
                        TELEMETRY_GUARD_BEAT_METRICS_PORT=str(self.metrics_port))
        self.beat: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    def _spawn(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("a")
        return subprocess.Popen([sys.executable, "-m", "celery", "-A", APP, *args],
                                cwd=ROOT, env={**self.env, **env}, stdout=log,
                                stderr=subprocess.STDOUT)

    def start_beat(self, *extra: str) -> None:
        self.beat = self._spawn("beat", "beat", "-s", str(self.tmp / "schedule"), "-l", "INFO",
                                *extra)

    def start_worker(self) -> None:
        self.worker = self._spawn("worker", "worker", "-P", "prefork", "-c", "4", "-l",
                                  "WARNING", "--without-heartbeat", "--without-gossip",
                                  "--without-mingle",
                                  TELEMETRY_GUARD_METRICS_PORT=str(self.worker_metrics_port),
                                  PROMETHEUS_MULTIPROC_DIR=str(self.tmp / "prom"))

    def worker_ready(self) -> bool:
        """The worker serves ``/metrics``: its main process got ``worker_ready``, so it
        consumes. (Asked over HTTP, not by a broadcast ping: a Celery app made in the test
        process would leave kombu's after-fork hooks behind, and every later test that
        forks would hang in its child.)"""
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.worker_metrics_port}/metrics", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def stop_beat(self) -> None:
        if self.beat is not None:
            stop_process(self.beat)
            self.beat = None

    def stop_worker(self) -> None:
        if self.worker is not None:
            stop_process(self.worker)
            self.worker = None

    def logs(self) -> str:
        """The tail of beat's and the worker's logs (for a failure message)."""
        parts = []
        for name in ("beat", "worker"):
            path = self.tmp / f"{name}.log"
            if path.exists():
                text = path.read_text(encoding="utf-8", errors="replace")[-3000:]
                parts.append(f"--- {name}.log\n{text}")
        return "\n".join(parts)


def periodic_processes(redis_url: str, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> Iterator[Processes]:
    """The body of a ``processes`` fixture: beat and worker on ``redis_url``, both stopped
    (and the app module, which the test process may import too, forgotten) afterwards."""
    monkeypatch.setenv("TG_TEST_BROKER", redis_url)  # the CLI imports the same app module
    sys.modules.pop(APP, None)
    procs = Processes(redis_url, tmp_path)
    yield procs
    procs.stop_beat()
    procs.stop_worker()
    module = sys.modules.pop(APP, None)
    if module is not None:
        module.guard.close()
