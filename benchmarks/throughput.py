"""Worker throughput of no-op Celery tasks: bare Celery, guard-observed, GuardedTask, DIY.

One private redis-server is the broker. Each (rep, workload, variant) run starts a fresh
`celery worker -P solo` and warms it with 200 tasks, the first of which fails (so a guarded
worker must have recorded it: proof that its guard is connected); N messages staged in an
unconsumed list are RENAMEd into its queue at t0, and the last (a sentinel) writes the end
time to Redis. Throughput = N / (end - t0); runs are interleaved (the order reversed every
other repetition, which cancels a linear drift) and the median of R repetitions reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

import celery  # noqa: E402
import kombu  # noqa: E402
import redis  # noqa: E402
from celery import Celery  # noqa: E402

from benchmarks._redis import PrivateRedis, start_redis  # noqa: E402
from benchmarks.apps._common import (  # noqa: E402
    NOOP,
    PREFETCH_MULTIPLIER,
    QUEUE,
    RESULT_KEY,
    SENTINEL,
    STAGING_QUEUE,
)

#: ``observed`` runs next to ``bare`` in each repetition: their paired ratio at 0 % failing
#: is the success-path requirement below.
VARIANTS = ("bare", "observed", "guarded", "diy")
#: Variants whose guard writes every failure to the error log (checked after each run).
RECORDING_VARIANTS = ("observed", "guarded")
#: Plain tasks in a guarded app, 0 % failing, must run at least this fraction of bare.
OBSERVED_MIN_RATIO = 0.97
BROKER_DB = 0
ERRORLOG_DB = 1
ERRORS_STREAM = "telemetry_guard:errors"
#: Environment a worker must not inherit: it would change what a variant does.
FOREIGN_ENV = ("TELEMETRY_GUARD_", "PROMETHEUS_MULTIPROC_DIR", "SENTRY_", "OTEL_")


@dataclass
class Run:
    """One measured run."""

    rep: int
    variant: str
    failing_percent: int
    tasks: int
    seconds: float
    tasks_per_s: float
    errorlog_records: int | None
    gc_ms: float | None = None
    gc_full: int | None = None


class Worker:
    """One ``celery worker -P solo -c 1`` subprocess for a variant."""

    def __init__(self, variant: str, env: dict[str, str], log_path: Path) -> None:
        self.log = log_path.open("w")
        self.command = [
            sys.executable, "-m", "celery", "-A", f"benchmarks.apps.{variant}", "worker",
            "-P", "solo", "-c", "1", "--without-heartbeat", "--without-gossip",
            "--without-mingle", "-l", "WARNING", "-Q", QUEUE]
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"worker exited with {self.process.returncode}; see {self.log.name}")

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


def worker_env(server: PrivateRedis, logdir: Path, variant: str,
               profile: Path | None, gc_stats: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV)}
    env.update(PYTHONPATH=str(ROOT), BENCH_VARIANT=variant,
               BENCH_BROKER_URL=server.url(BROKER_DB),
               BENCH_ERRORLOG_URL=server.url(ERRORLOG_DB), BENCH_LOG_DIR=str(logdir))
    if profile is not None:
        env["BENCH_PROFILE"] = str(profile)
    if gc_stats:
        env["BENCH_GC_STATS"] = "1"
    return env


def publish(app: Celery, producer: Any, queue: str, count: int, fail_every: int,
            sentinel: tuple[str, str]) -> None:
    """``count - 1`` no-op tasks then one sentinel, in this order, to ``queue``."""
    for i in range(count - 1):
        app.send_task(NOOP, args=(i, fail_every), queue=queue, producer=producer)
    app.send_task(SENTINEL, args=sentinel, queue=queue, producer=producer)


def publish_probe(app: Celery, producer: Any, queue: str) -> None:
    """One no-op task that fails (``fail_every=1``): a guarded worker must record it."""
    app.send_task(NOOP, args=(0, 1), queue=queue, producer=producer)


def failures(count: int, fail_every: int) -> int:
    """How many of the no-op tasks ``0 .. count - 1`` raise."""
    return count // fail_every if fail_every else 0


def wait_result(client: redis.Redis, run_id: str, worker: Worker,
                timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.hgetall(RESULT_KEY + run_id)
        if found:
            return {k.decode(): v.decode() for k, v in found.items()}
        worker.check_alive()
        time.sleep(0.05)
    raise RuntimeError(f"sentinel {run_id} did not run within {timeout:.0f} s")


def run_once(server: PrivateRedis, producer_app: Celery, *, rep: int, variant: str,
             failing_percent: int, tasks: int, warmup: int, workdir: Path,
             profile_dir: Path | None, gc_stats: bool = False) -> Run:
    """Fresh broker, fresh worker, warm-up, then one measured window of ``tasks`` messages."""
    broker = server.client(BROKER_DB)
    for db in (BROKER_DB, ERRORLOG_DB):
        server.client(db).flushdb()
    fail_every = 100 // failing_percent if failing_percent else 0
    name = f"{variant}-{failing_percent}pct-rep{rep}"
    profile = profile_dir / f"{name}.prof" if profile_dir is not None else None
    worker = Worker(variant, worker_env(server, workdir, variant, profile, gc_stats),
                    workdir / f"{name}.log")
    try:
        # A fresh connection: kombu remembers declared queues per connection, and the
        # FLUSHDB above dropped their bindings.
        with producer_app.connection_for_write() as conn:
            producer = conn.Producer()
            publish(producer_app, producer, STAGING_QUEUE, tasks, fail_every, (name, "end"))
            publish_probe(producer_app, producer, QUEUE)
            publish(producer_app, producer, QUEUE, warmup - 1, fail_every,
                    (f"{name}-warm", "warm"))
        staged = broker.llen(STAGING_QUEUE)
        if staged != tasks:
            raise RuntimeError(f"{staged} messages in the Redis list {STAGING_QUEUE!r}, "
                               f"expected {tasks}: the transport's queue layout changed?")
        warm = wait_result(broker, f"{name}-warm", worker, timeout=120)
        if int(warm["processed"]) != warmup - 1:
            raise RuntimeError(f"warm-up ran {warm['processed']} tasks, expected {warmup - 1}")
        start = time.time()
        broker.rename(STAGING_QUEUE, QUEUE)
        end = wait_result(broker, name, worker, timeout=max(120.0, tasks / 20))
    finally:
        worker.stop()
    if int(end["llen"]) != 0 or int(end["processed"]) != tasks - 1:
        raise RuntimeError(f"{name}: the sentinel did not run last (queue length "
                           f"{end['llen']}, {end['processed']} tasks before it)")
    seconds = float(end["end"]) - start
    errorlog = None
    if variant in RECORDING_VARIANTS:  # the worker has flushed its error log on shutdown
        errorlog = int(server.client(ERRORLOG_DB).xlen(ERRORS_STREAM))
        expected = 1 + failures(warmup - 2, fail_every) + failures(tasks - 1, fail_every)
        if errorlog != expected:
            raise RuntimeError(
                f"{name}: {errorlog} error log records, expected {expected} (the warm-up's "
                f"failing probe included): is the guard installed and observing this task?")
    run = Run(rep, variant, failing_percent, tasks, seconds, tasks / seconds, errorlog)
    if gc_stats:
        run.gc_ms, run.gc_full = float(end["gc_ms"]), int(end["gc_full"])
    return run


@dataclass
class Row:
    """The medians of one (variant, workload)."""

    variant: str
    failing_percent: int
    median_tasks_per_s: float
    min_tasks_per_s: float
    max_tasks_per_s: float
    us_per_task: float
    ratio_to_bare: float | None
    #: Median over reps of this rep's throughput / bare's in the same rep (cancels drift).
    paired_ratio: float | None = None


def summarise(runs: list[Run], variants: list[str], workloads: list[int]) -> list[Row]:
    rows: list[Row] = []
    for workload in workloads:
        medians: dict[str, float] = {}
        for variant in variants:
            values = [r.tasks_per_s for r in runs
                      if r.variant == variant and r.failing_percent == workload]
            medians[variant] = statistics.median(values)
            rows.append(Row(variant, workload, medians[variant], min(values), max(values),
                            1e6 / medians[variant], None))
        if "bare" in medians:
            bare = {r.rep: r.tasks_per_s for r in runs
                    if r.variant == "bare" and r.failing_percent == workload}
            for row in rows:
                if row.failing_percent == workload:
                    row.ratio_to_bare = row.median_tasks_per_s / medians["bare"]
                    row.paired_ratio = statistics.median(
                        r.tasks_per_s / bare[r.rep] for r in runs
                        if r.variant == row.variant and r.failing_percent == workload
                        and r.rep in bare)
    return rows


def table(rows: list[Row]) -> str:
    lines = [f"{'variant':<9} {'failing':>7} {'median tasks/s':>15} {'min–max':>13} "
             f"{'µs/task':>8} {'vs bare':>8} {'paired':>7}"]
    for r in rows:
        ratio = f"{r.ratio_to_bare:.3f}" if r.ratio_to_bare is not None else "-"
        paired = f"{r.paired_ratio:.3f}" if r.paired_ratio is not None else "-"
        spread = f"{r.min_tasks_per_s:.0f}–{r.max_tasks_per_s:.0f}"
        lines.append(f"{r.variant:<9} {r.failing_percent:>6}% {r.median_tasks_per_s:>15.0f} "
                     f"{spread:>13} {r.us_per_task:>8.0f} {ratio:>8} {paired:>7}")
    lines.append("vs bare: ratio of medians; paired: median of per-rep ratios to bare.")
    return "\n".join(lines)


def observed_requirement(rows: list[Row]) -> dict[str, Any] | None:
    """Plain tasks in a guarded app vs bare Celery, 0 % failing (None when not measured)."""
    row = next((r for r in rows if r.variant == "observed" and r.failing_percent == 0), None)
    if row is None or row.ratio_to_bare is None or row.paired_ratio is None:
        return None  # not measured, or without bare
    return {"variant": "observed", "failing_percent": 0, "minimum_ratio": OBSERVED_MIN_RATIO,
            "ratio_to_bare": row.ratio_to_bare, "paired_ratio": row.paired_ratio,
            "met": row.paired_ratio >= OBSERVED_MIN_RATIO}


def requirement_line(found: dict[str, Any]) -> str:
    verdict = "met" if found["met"] else "NOT met"
    return (f"plain tasks in a guarded app, 0% failing: observed/bare = "
            f"{found['paired_ratio']:.3f} paired ({found['ratio_to_bare']:.3f} ratio of "
            f"medians); requirement paired >= {found['minimum_ratio']:.2f}: {verdict}")


def machine(server: PrivateRedis) -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "redis_server": server.version(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3000,
                        help="messages in each measured window, sentinel included (3000)")
    parser.add_argument("--reps", type=int, default=4, help="repetitions (4)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="warm-up tasks per run, the failing probe and sentinel "
                             "included (200)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--workloads", nargs="+", type=int, default=[0, 20],
                        metavar="PERCENT", help="percent of failing tasks, dividing 100 (0 20)")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="also write the results as JSON to PATH (stdout when omitted)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run each worker's measured window under cProfile, stats in DIR "
                             "(throughput is then not comparable)")
    parser.add_argument("--gc-stats", action="store_true",
                        help="time the workers' garbage collections in the measured window")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the worker logs and structlog files (printed path)")
    args = parser.parse_args(argv)
    for p in args.workloads:
        if p < 0 or (p and 100 % p):
            parser.error(f"--workloads: {p} does not divide 100")
    if args.tasks < 2 or args.warmup < 3:
        parser.error("--tasks must be at least 2 and --warmup at least 3")
    return args


def reproduce(args: argparse.Namespace) -> str:
    python = os.path.relpath(sys.executable, ROOT)
    words = [python, "benchmarks/throughput.py", "--tasks", str(args.tasks), "--reps",
             str(args.reps), "--warmup", str(args.warmup), "--variants", *args.variants,
             "--workloads", *map(str, args.workloads)]
    if args.profile is not None:
        words += ["--profile", str(args.profile)]
    if args.gc_stats:
        words.append("--gc-stats")
    return f"cd {shlex.quote(str(ROOT))} && {shlex.join(words)}"


def run_order(variants: list[str], rep: int) -> list[str]:
    """The variants in their order on odd repetitions, reversed on even ones."""
    return list(variants) if rep % 2 else list(reversed(variants))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="tg-bench-"))
    server = start_redis()
    producer_app = Celery("bench-producer", broker=server.url(BROKER_DB))
    producer_app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)
    runs: list[Run] = []
    began = time.monotonic()
    ok = False
    try:
        info = machine(server)
        total = args.reps * len(args.workloads) * len(args.variants)
        for rep in range(1, args.reps + 1):
            for workload in args.workloads:
                for variant in run_order(args.variants, rep):
                    run = run_once(server, producer_app, rep=rep, variant=variant,
                                   failing_percent=workload, tasks=args.tasks,
                                   warmup=args.warmup, workdir=workdir,
                                   profile_dir=args.profile, gc_stats=args.gc_stats)
                    runs.append(run)
                    print(f"[{len(runs)}/{total} {time.monotonic() - began:5.0f}s] rep {rep} "
                          f"{variant:<8} {workload:>2}% failing: {run.tasks_per_s:7.0f} tasks/s"
                          + (f", error log {run.errorlog_records}"
                             if run.errorlog_records is not None else "")
                          + (f", gc {run.gc_ms:.0f} ms ({run.gc_full} full)"
                             if run.gc_ms is not None else ""),
                          file=sys.stderr, flush=True)
        ok = True
    finally:
        server.stop()
        if ok and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"worker logs kept in {workdir}", file=sys.stderr)
    rows = summarise(runs, args.variants, args.workloads)
    requirement = observed_requirement(rows)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"method: {args.reps} interleaved reps (order reversed every other rep), "
          f"{args.tasks} tasks per window after "
          f"{args.warmup} warm-up tasks (the first fails), worker -P solo -c 1, prefetch "
          f"multiplier {PREFETCH_MULTIPLIER}, acks_late, no result backend"
          + (" [PROFILED: not comparable]" if args.profile is not None else ""))
    print(table(rows))
    if requirement is not None:
        print(requirement_line(requirement))
    print(f"reproduce: {reproduce(args)}")
    print(f"wall time: {time.monotonic() - began:.0f} s")
    if args.json is not None:
        document = {"machine": info, "command": reproduce(args), "args": {
            "tasks": args.tasks, "reps": args.reps, "warmup": args.warmup,
            "variants": args.variants, "workloads": args.workloads,
            "profiled": args.profile is not None},
            "summary": [asdict(r) for r in rows], "observed_requirement": requirement,
            "runs": [asdict(r) for r in runs]}
        text = json.dumps(document, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
