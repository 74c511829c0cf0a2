"""Per-task costs from ``throughput.py --profile DIR``: every process of a run merged.

For each run (``<variant>-<failing>pct-rep<N>``; a prefork worker leaves one file per
process: ``.main-<pid>.prof`` and ``.child-<pid>.prof``), prints the self time per task by
package (no double counting; the standard library's and builtins' time is charged to the
package that called them), the functions of the telemetry packages with the largest
cumulative time per task (nested ones overlap) and, with ``--against bare``, the functions
whose self time per task grew most over the ``bare`` run of the same workload and rep.
Tasks are counted by calls of ``run_noop``. Costs are under cProfile (inflated, and more so
for many small calls): compare variants, not absolute numbers.

    .venv/bin/python benchmarks/profile_summary.py DIR [--top 25] [--against bare]
        [--runs guarded-0pct-rep1 ...]

DIR holds the profiles of one ``throughput.py --profile DIR`` run (one pool shape).
"""

from __future__ import annotations

import argparse
import pstats
import re
import sys
from collections import defaultdict
from pathlib import Path

#: (package, marker in a code file's path); the first that matches wins.
PACKAGES = (
    ("telemetry_guard", "/telemetry_guard/"),
    ("opentelemetry", "/opentelemetry/"),
    ("prometheus_client", "/prometheus_client/"),
    ("structlog", "/structlog/"),
    ("benchmarks", "/benchmarks/"),
    ("celery", "/celery/"),
    ("kombu", "/kombu/"),
    ("billiard", "/billiard/"),
    ("redis", "/redis/"),
    ("vine", "/vine/"),
)
TELEMETRY = ("telemetry_guard", "opentelemetry", "prometheus_client", "structlog")
#: Built-ins that wait for work rather than do it (idle time, not per-task cost): a pool
#: child reading its job pipe, the main process's event loop, a thread's lock or sleep.
IDLE = re.compile(r"^<(built-in method posix\.read|method 'poll' of 'select\.epoll'|"
                  r"built-in method posix\.waitpid|method 'acquire' of '_thread\.lock'|"
                  r"built-in method time\.sleep)")


def package(filename: str) -> str:
    for name, marker in PACKAGES:
        if marker in filename:
            return name
    stdlib = "/lib/python3" in filename and "-packages/" not in filename
    return "python" if filename.startswith("~") or stdlib else "other"


def load(files: list[Path]) -> pstats.Stats:
    stats = pstats.Stats(str(files[0]))
    for extra in files[1:]:
        stats.add(str(extra))
    return stats


def tasks_of(stats: pstats.Stats) -> int:
    raw = stats.stats  # type: ignore[attr-defined]
    return sum(v[1] for (f, _, name), v in raw.items()
               if name == "run_noop" and f.endswith("_common.py"))


def label(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    for _, marker in PACKAGES:
        if marker in filename:
            filename = marker.strip("/") + "/" + filename.split(marker, 1)[1]
            break
    return f"{filename}:{line}({name})"


def self_per_task(raw: dict, tasks: int) -> dict[tuple[str, int, str], float]:
    return {key: v[2] / tasks for key, v in raw.items()}


def report(run: str, files: list[Path], top: int, baseline: list[Path] | None) -> None:
    stats = load(files)
    raw = stats.stats  # type: ignore[attr-defined]
    tasks = tasks_of(stats)
    roles = sorted(f.name[len(run):].lstrip(".").split("-")[0] or "solo" for f in files)
    print(f"== {run}: {tasks} tasks, {len(files)} processes ({', '.join(roles)})")
    if not tasks:
        return
    for role in ("main", "child"):
        mine = [f for f in files if f".{role}-" in f.name]
        if mine:
            part = load(mine).stats  # type: ignore[attr-defined]
            busy = sum(v[2] for k, v in part.items() if not IDLE.search(k[2]))
            print(f"{role} process{'es' if len(mine) > 1 else ''}: busy {busy * 1e6 / tasks:.0f} "
                  f"µs per task (self time, waiting left out)")
    by_package: dict[str, float] = defaultdict(float)
    idle = 0.0
    for key, (_, _, tottime, _, callers) in raw.items():
        own = package(key[0])
        if IDLE.search(key[2]):
            idle += tottime
            continue
        if own != "python" or not callers:
            by_package[own] += tottime
            continue
        for caller, figures in callers.items():  # (calls, primitive calls, tottime, cumtime)
            by_package[package(caller[0])] += figures[2]
    busy = sum(by_package.values())
    print(f"self time per task, µs (waiting for work left out: {idle * 1e6 / tasks:.0f}): "
          f"total {busy * 1e6 / tasks:.0f}")
    print("  " + ", ".join(f"{name} {value * 1e6 / tasks:.0f}" for name, value in
                           sorted(by_package.items(), key=lambda kv: -kv[1])))
    rows = [(ct, nc, tt, key) for key, (_, nc, tt, ct, _) in raw.items()
            if package(key[0]) in TELEMETRY]
    print(f"top {top} telemetry functions by cumulative µs per task "
          "(calls per task, self µs per task):")
    for ct, nc, tt, key in sorted(rows, reverse=True)[:top]:
        print(f"  {ct * 1e6 / tasks:7.1f}  {nc / tasks:5.2f}  {tt * 1e6 / tasks:6.1f}  "
              f"{label(key)}")
    if baseline:
        base_stats = load(baseline)
        base = self_per_task(base_stats.stats, tasks_of(base_stats))  # type: ignore[attr-defined]
        mine = self_per_task(raw, tasks)
        base = {k: v for k, v in base.items() if not IDLE.search(k[2])}
        mine = {k: v for k, v in mine.items() if not IDLE.search(k[2])}
        grown = sorted(((mine.get(k, 0.0) - base.get(k, 0.0), k) for k in mine.keys() | base),
                       reverse=True)
        print(f"top {top} self-time growth per task over {baseline[0].name.split('.')[0]}, µs "
              f"(total {sum(mine.values()) * 1e6 - sum(base.values()) * 1e6:+.0f}, "
              "waiting left out):")
        for delta, key in grown[:top]:
            print(f"  {delta * 1e6:+7.1f}  {label(key)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--runs", nargs="+", help="run names (default: every run in DIR)")
    parser.add_argument("--against", metavar="VARIANT",
                        help="also show the self-time growth over this variant's run")
    args = parser.parse_args(argv)
    runs: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(args.directory.glob("*.prof")):
        runs[path.name.split(".", 1)[0]].append(path)
    for run in args.runs or sorted(runs):
        if run not in runs:
            parser.error(f"no profile of {run} in {args.directory}")
        other = None
        if args.against and not run.startswith(args.against + "-"):
            other = runs.get(args.against + "-" + run.split("-", 1)[1])
        report(run, runs[run], args.top, other)
    return 0


if __name__ == "__main__":
    sys.exit(main())
