"""What one failure costs a worker, in one process: Celery's tracer, every task failing.

For each variant (``bare``, ``observed``, ``guarded``: the apps of ``throughput.py``), a fresh
process sets the app up as its worker does (Celery's worker optimisations, the guard, a
TracerProvider), then runs Celery's own tracer on tasks that all fail and unpickles each
failure's ``ExceptionInfo`` as the worker's main process does. Prints, per failure: the
microseconds, the garbage collections they started, and the code positions billiard copies
for the traceback's frames (past about 2,700 the copy stops fitting CPython's tuple free list
and collections start on every failure). Explains ``throughput.py``'s 20 % column; not a
throughput number. Medians of 5 rounds.

    .venv/bin/python benchmarks/failure_path.py [--failures 2000]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

from benchmarks._redis import start_redis  # noqa: E402

VARIANTS = ("bare", "observed", "guarded")


def measure(variant: str, failures: int) -> dict[str, Any]:
    """In this process: the variant's app as its worker sets it up, ``failures`` failures."""
    from celery.app.trace import build_tracer, setup_worker_optimizations

    module = importlib.import_module(f"benchmarks.apps.{variant}")
    if hasattr(module, "set_up_telemetry"):
        module.set_up_telemetry()
    setup_worker_optimizations(module.app)
    task = module.noop
    tracer = build_tracer(task.name, task, app=module.app, eager=False, propagate=False)

    def fail(i: int) -> Any:
        request = {"id": str(uuid.uuid4()), "retries": 0, "hostname": "celery@bench",
                   "delivery_info": {"routing_key": "bench", "exchange": "", "priority": 0},
                   "is_eager": False}
        einfo = tracer(request["id"], (i, 1), {}, request)[0]
        pickle.loads(pickle.dumps(einfo))  # the result the main process receives
        return einfo

    einfo = fail(0)
    frames, tb = [], einfo.tb
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append((code.co_name, len(getattr(code, "_co_positions", ()))))
        tb = tb.tb_next
    for i in range(300):
        fail(i)
    collections = [0]
    gc.callbacks.append(lambda phase, info: collections.__setitem__(
        0, collections[0] + (phase == "stop")))
    samples, counts = [], []
    for _ in range(5):
        collections[0] = 0
        started = time.perf_counter()
        for i in range(failures):
            fail(i)
        samples.append((time.perf_counter() - started) / failures * 1e6)
        counts.append(collections[0] / failures)
    return {"variant": variant, "us": statistics.median(samples),
            "collections": statistics.median(counts), "frames": frames}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failures", type=int, default=2000)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:  # one variant, in a process of its own
        print(json.dumps(measure(args.variant, args.failures)))
        return 0
    server = start_redis()
    logdir = tempfile.mkdtemp(prefix="tg-failure-path-")
    env = dict(os.environ, BENCH_BROKER_URL=server.url(0), BENCH_ERRORLOG_URL=server.url(1),
               BENCH_LOG_DIR=logdir, PYTHONPATH=str(ROOT))
    try:
        rows = []
        for variant in VARIANTS:
            done = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--failures",
                 str(args.failures)], env=env, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        server.stop()
    bare = rows[0]["us"]
    print(f"{'variant':<9} {'µs/failure':>11} {'vs bare':>8} {'collections':>12}  "
          "traceback frames copied (code positions)")
    for row in rows:
        positions = sum(n for _, n in row["frames"])
        print(f"{row['variant']:<9} {row['us']:11.0f} {row['us'] - bare:+8.0f} "
              f"{row['collections']:12.2f}  {positions:,}: "
              + ", ".join(f"{name} {n}" for name, n in row["frames"]))
    print(f"reproduce: cd {ROOT} && {Path(sys.executable).relative_to(ROOT)} "
          f"benchmarks/failure_path.py --failures {args.failures}"
          if Path(sys.executable).is_relative_to(ROOT) else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
