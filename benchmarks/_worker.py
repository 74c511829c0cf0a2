"""One benchmark worker: a ``celery worker`` subprocess, its environment and its CPU time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks._redis import PrivateRedis
from benchmarks.apps._common import QUEUE

ROOT = Path(__file__).resolve().parents[1]
BROKER_DB = 0
ERRORLOG_DB = 1
#: Environment a worker must not inherit: it would change what a variant does.
FOREIGN_ENV = ("TELEMETRY_GUARD_", "PROMETHEUS_MULTIPROC_DIR", "SENTRY_", "OTEL_")


@dataclass(frozen=True)
class Shape:
    """How the worker runs: its pool, its concurrency, multiprocess metrics or not."""

    pool: str = "solo"
    concurrency: int = 1
    multiproc: bool = False

    @property
    def production(self) -> bool:
        """The shape issue 13's targets are about: prefork, several children, multiprocess
        metrics (tracing is on in every telemetry variant)."""
        return self.pool == "prefork" and self.concurrency > 1 and self.multiproc

    def describe(self) -> str:
        words = f"worker -P {self.pool} -c {self.concurrency}"
        if self.pool == "prefork":
            words += " (-O fair)"
        if self.multiproc:
            words += ", PROMETHEUS_MULTIPROC_DIR set (a fresh directory per run)"
        return words


class Worker:
    """One ``celery worker`` subprocess for a variant."""

    def __init__(self, variant: str, shape: Shape, env: dict[str, str],
                 log_path: Path) -> None:
        self.log = log_path.open("w")
        self.command = [
            sys.executable, "-m", "celery", "-A", f"benchmarks.apps.{variant}", "worker",
            "-P", shape.pool, "-c", str(shape.concurrency), "--without-heartbeat",
            "--without-gossip", "--without-mingle", "-l", "WARNING", "-Q", QUEUE]
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"worker exited with {self.process.returncode}; see {self.log.name}")

    def cpu_seconds(self) -> tuple[float, float] | None:
        """User + system CPU of the worker's main process, and of its live children (Linux)."""
        try:
            tick = os.sysconf("SC_CLK_TCK")
            main = _cpu_ticks(self.process.pid) / tick
            children = sum(_cpu_ticks(pid) for pid in _children(self.process.pid)) / tick
        except (OSError, ValueError, IndexError):
            return None
        return main, children

    def stop(self) -> None:
        """SIGTERM (warm shutdown), then wait; SIGKILL after 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _cpu_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[11]) + int(fields[12])  # utime, stime


def worker_env(server: PrivateRedis, logdir: Path, variant: str, shape: Shape,
               counters: Path, profile: Path | None, gc_stats: bool,
               multiproc_dir: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV)}
    env.update(PYTHONPATH=str(ROOT), BENCH_VARIANT=variant,
               BENCH_BROKER_URL=server.url(BROKER_DB),
               BENCH_ERRORLOG_URL=server.url(ERRORLOG_DB), BENCH_LOG_DIR=str(logdir),
               BENCH_COUNTERS=str(counters), BENCH_POOL=shape.pool)
    if profile is not None:
        env["BENCH_PROFILE"] = str(profile)
    if gc_stats:
        env["BENCH_GC_STATS"] = "1"
    if multiproc_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
    return env
