"""Worker throughput of no-op Celery tasks: bare Celery, guard-observed, GuardedTask, DIY, floor.

One private redis-server is the broker. Each (rep, workload, variant) run starts a fresh
`celery worker -P solo` (or, with ``--pool prefork --concurrency 2 --multiproc``, the
production shape: prefork children and ``PROMETHEUS_MULTIPROC_DIR``) and warms it with 200
tasks, the first of which fails (so a guarded worker must have recorded it: proof that its
guard is connected); N messages staged in an unconsumed list are RENAMEd into its queue at
t0, and the last (a sentinel) writes the end time to Redis once every no-op task before it
has run, in whichever process (counted in a file every process maps: ``apps/_counters.py``;
the sentinel's docstring in ``apps/_common.py`` says what the end time leaves out).
Throughput = N / (end - t0); runs are interleaved (the order reversed every other
repetition, which cancels a linear drift) and the median of R repetitions reported. Also
reported: the CPU time of every worker process in the window (from /proc), per task.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

import celery  # noqa: E402
import kombu  # noqa: E402
import redis  # noqa: E402
from celery import Celery  # noqa: E402

from benchmarks import _summary  # noqa: E402
from benchmarks._redis import PrivateRedis, start_redis  # noqa: E402
from benchmarks._summary import Run  # noqa: E402
from benchmarks._worker import BROKER_DB, ERRORLOG_DB, Shape, Worker, worker_env  # noqa: E402
from benchmarks.apps import _counters  # noqa: E402
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
VARIANTS = ("bare", "observed", "guarded", "diy", "floor")
#: Variants whose guard writes every failure to the error log (checked after each run).
RECORDING_VARIANTS = ("observed", "guarded")
#: Variants with a TracerProvider (BatchSpanProcessor, exporter counting and dropping).
TRACING_VARIANTS = ("observed", "guarded", "diy", "floor")
#: Variants that open exactly one span per task run.
ONE_SPAN_VARIANTS = ("guarded", "floor")
ERRORS_STREAM = "telemetry_guard:errors"
SOLO = Shape()


def publish(app: Celery, producer: Any, queue: str, count: int, fail_every: int,
            sentinel: tuple[str, str, int]) -> None:
    """``count - 1`` no-op tasks then one sentinel, in this order, to ``queue``.

    ``sentinel``: run id, phase, and the no-op tasks published before it since the worker
    started (the sentinel waits for them all)."""
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
             profile_dir: Path | None, gc_stats: bool = False,
             shape: Shape = SOLO) -> Run:
    """Fresh broker, fresh worker, warm-up, then one measured window of ``tasks`` messages."""
    broker = server.client(BROKER_DB)
    for db in (BROKER_DB, ERRORLOG_DB):
        server.client(db).flushdb()
    fail_every = 100 // failing_percent if failing_percent else 0
    name = f"{variant}-{failing_percent}pct-rep{rep}"
    profile = profile_dir / f"{name}.prof" if profile_dir is not None else None
    counters = workdir / f"{name}.counters"
    _counters.create(counters)
    multiproc = workdir / f"{name}-metrics" if shape.multiproc else None
    if multiproc is not None:
        multiproc.mkdir()
    worker = Worker(variant, shape, worker_env(server, workdir, variant, shape, counters,
                                               profile, gc_stats, multiproc),
                    workdir / f"{name}.log")
    warm_tasks = warmup - 1  # the failing probe and the no-op tasks before the warm sentinel
    try:
        # A fresh connection: kombu remembers declared queues per connection, and the
        # FLUSHDB above dropped their bindings.
        with producer_app.connection_for_write() as conn:
            producer = conn.Producer()
            publish(producer_app, producer, STAGING_QUEUE, tasks, fail_every,
                    (name, "end", warm_tasks + tasks - 1))
            publish_probe(producer_app, producer, QUEUE)
            publish(producer_app, producer, QUEUE, warmup - 1, fail_every,
                    (f"{name}-warm", "warm", warm_tasks))
        staged = broker.llen(STAGING_QUEUE)
        if staged != tasks:
            raise RuntimeError(f"{staged} messages in the Redis list {STAGING_QUEUE!r}, "
                               f"expected {tasks}: the transport's queue layout changed?")
        warm = wait_result(broker, f"{name}-warm", worker, timeout=120)
        if int(warm["processed"]) != warm_tasks:
            raise RuntimeError(f"warm-up ran {warm['processed']} tasks, expected {warm_tasks}")
        before, cpu_before = _counters.read(counters), worker.cpu_seconds()
        start = time.time()
        broker.rename(STAGING_QUEUE, QUEUE)
        end = wait_result(broker, name, worker, timeout=max(120.0, tasks / 20))
        after, cpu_after = _counters.read(counters), worker.cpu_seconds()
    finally:
        worker.stop()
    if int(end["llen"]) != 0 or int(end["processed"]) != warm_tasks + tasks - 1:
        raise RuntimeError(f"{name}: the sentinel did not run last (queue length "
                           f"{end['llen']}, {int(end['processed']) - warm_tasks} tasks "
                           f"before it)")
    seconds = float(end["end"]) - start
    errorlog = None
    if variant in RECORDING_VARIANTS:  # the worker has flushed its error log on shutdown
        errorlog = int(server.client(ERRORLOG_DB).xlen(ERRORS_STREAM))
        expected = 1 + failures(warmup - 2, fail_every) + failures(tasks - 1, fail_every)
        if errorlog != expected:
            raise RuntimeError(
                f"{name}: {errorlog} error log records, expected {expected} (the warm-up's "
                f"failing probe included): is the guard installed and observing this task?")
    spans = _counters.read(counters)["spans"] if variant in TRACING_VARIANTS else None
    if variant in ONE_SPAN_VARIANTS and spans != warm_tasks + tasks - 1:
        raise RuntimeError(f"{name}: {spans} spans exported, expected one per no-op task "
                           f"({warm_tasks + tasks - 1}): is tracing working in every process?")
    run = Run(rep, variant, failing_percent, tasks, seconds, tasks / seconds, errorlog,
              spans=spans)
    if cpu_before is not None and cpu_after is not None:
        run.main_cpu_us_per_task = (cpu_after[0] - cpu_before[0]) * 1e6 / tasks
        run.cpu_us_per_task = run.main_cpu_us_per_task + (
            (cpu_after[1] - cpu_before[1]) * 1e6 / tasks)
    if gc_stats:
        run.gc_ms = (after["gc_ns"] - before["gc_ns"]) / 1e6
        run.gc_full = after["gc_full"] - before["gc_full"]
    if multiproc is not None and not any(multiproc.iterdir()) and variant != "bare":
        raise RuntimeError(f"{name}: no file in PROMETHEUS_MULTIPROC_DIR: were metrics "
                           "written in multiprocess mode?")
    return run


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
    parser.add_argument("--pool", choices=("solo", "prefork"), default="solo",
                        help="the workers' pool (solo)")
    parser.add_argument("--concurrency", type=int, metavar="N",
                        help="pool processes (1 on solo, 2 on prefork)")
    parser.add_argument("--multiproc", action="store_true",
                        help="set PROMETHEUS_MULTIPROC_DIR, a fresh directory per run. With "
                             "--pool prefork and 2+ processes, issue 13's targets are checked "
                             "(exit 1 when one is missed)")
    args = parser.parse_args(argv)
    if args.concurrency is None:
        args.concurrency = 1 if args.pool == "solo" else 2
    if args.concurrency < 1 or (args.pool == "solo" and args.concurrency != 1):
        parser.error("--concurrency: 1 on the solo pool, at least 1 on prefork")
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
    if args.pool != "solo":
        words += ["--pool", args.pool, "--concurrency", str(args.concurrency)]
    if args.multiproc:
        words.append("--multiproc")
    return f"cd {shlex.quote(str(ROOT))} && {shlex.join(words)}"


def run_order(variants: list[str], rep: int) -> list[str]:
    """The variants in their order on odd repetitions, reversed on even ones."""
    return list(variants) if rep % 2 else list(reversed(variants))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    shape = Shape(args.pool, args.concurrency, args.multiproc)
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
                                   profile_dir=args.profile, gc_stats=args.gc_stats,
                                   shape=shape)
                    runs.append(run)
                    print(f"[{len(runs)}/{total} {time.monotonic() - began:5.0f}s] rep {rep} "
                          f"{variant:<8} {workload:>2}% failing: {run.tasks_per_s:7.0f} tasks/s"
                          + (f", error log {run.errorlog_records}"
                             if run.errorlog_records is not None else "")
                          + (f", gc {run.gc_ms:.0f} ms ({run.gc_full} full)"
                             if run.gc_ms is not None else "")
                          + (f", CPU {run.cpu_us_per_task:.0f} µs/task "
                             f"({run.main_cpu_us_per_task:.0f} in the main process)"
                             if run.cpu_us_per_task is not None else "")
                          + (f", spans {run.spans}" if run.spans is not None else ""),
                          file=sys.stderr, flush=True)
        ok = True
    finally:
        server.stop()
        if ok and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"worker logs kept in {workdir}", file=sys.stderr)
    rows = _summary.summarise(runs, args.variants, args.workloads)
    # The 0.97 requirement is the solo pool's; the production shape has issue 13's targets.
    requirement = _summary.observed_requirement(rows) if shape == SOLO else None
    # Under cProfile the ratios mean nothing: no target is checked then.
    targets = (_summary.production_targets(rows)
               if shape.production and args.profile is None else [])
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"method: {args.reps} interleaved reps (order reversed every other rep), "
          f"{args.tasks} tasks per window after "
          f"{args.warmup} warm-up tasks (the first fails), {shape.describe()}, prefetch "
          f"multiplier {PREFETCH_MULTIPLIER}, acks_late, no result backend"
          + (" [PROFILED: not comparable]" if args.profile is not None else ""))
    print(_summary.table(rows))
    if requirement is not None:
        print(_summary.requirement_line(requirement))
    for target in targets:
        print(_summary.target_line(target))
    for line in _summary.floor_lines(runs, args.workloads):
        print(line)
    print(f"reproduce: {reproduce(args)}")
    print(f"wall time: {time.monotonic() - began:.0f} s")
    if args.json is not None:
        document = {"machine": info, "command": reproduce(args), "args": {
            "tasks": args.tasks, "reps": args.reps, "warmup": args.warmup,
            "variants": args.variants, "workloads": args.workloads,
            "profiled": args.profile is not None, "pool": args.pool,
            "concurrency": args.concurrency, "multiproc": args.multiproc},
            "summary": [asdict(r) for r in rows], "observed_requirement": requirement,
            "production_targets": targets,
            "runs": [asdict(r) for r in runs]}
        text = json.dumps(document, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 1 if any(not t["met"] for t in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
