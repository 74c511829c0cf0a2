"""The throughput benchmark's results: medians per (variant, workload), ratios, targets."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

#: Plain tasks in a guarded app, 0 % failing, must run at least this fraction of bare
#: (on the default shape: the solo pool).
OBSERVED_MIN_RATIO = 0.97
#: Issue 13's targets in the production shape (prefork, two children, multiprocess
#: metrics, a real TracerProvider): minimum paired ratio to bare by failing percent.
PRODUCTION_TARGETS = {0: 0.93, 20: 0.90}
PRODUCTION_VARIANTS = ("observed", "guarded")


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
    #: CPU of every worker process (main and children) in the window, per task.
    cpu_us_per_task: float | None = None
    #: The part of ``cpu_us_per_task`` spent in the worker's main process (the consumer).
    main_cpu_us_per_task: float | None = None
    #: Spans the worker's exporter received, warm-up included (exported by the end of the run).
    spans: int | None = None


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
    #: Median over reps of the worker's CPU µs per task (all its processes).
    cpu_us_per_task: float | None = None
    #: Median over reps of the main process's part of it.
    main_cpu_us_per_task: float | None = None


def summarise(runs: list[Run], variants: list[str], workloads: list[int]) -> list[Row]:
    rows: list[Row] = []
    for workload in workloads:
        medians: dict[str, float] = {}
        for variant in variants:
            mine = [r for r in runs if r.variant == variant and r.failing_percent == workload]
            values = [r.tasks_per_s for r in mine]
            cpu = [r.cpu_us_per_task for r in mine if r.cpu_us_per_task is not None]
            main_cpu = [r.main_cpu_us_per_task for r in mine
                        if r.main_cpu_us_per_task is not None]
            medians[variant] = statistics.median(values)
            rows.append(Row(variant, workload, medians[variant], min(values), max(values),
                            1e6 / medians[variant], None,
                            cpu_us_per_task=statistics.median(cpu) if cpu else None,
                            main_cpu_us_per_task=(statistics.median(main_cpu)
                                                  if main_cpu else None)))
        if "bare" in medians:
            for row in rows:
                if row.failing_percent == workload:
                    row.ratio_to_bare = row.median_tasks_per_s / medians["bare"]
                    row.paired_ratio = paired(runs, row.variant, "bare", workload)
    return rows


def table(rows: list[Row]) -> str:
    lines = [f"{'variant':<9} {'failing':>7} {'median tasks/s':>15} {'min–max':>13} "
             f"{'µs/task':>8} {'vs bare':>8} {'paired':>7} {'CPU µs/task':>12} {'main':>5}"]
    for r in rows:
        ratio = f"{r.ratio_to_bare:.3f}" if r.ratio_to_bare is not None else "-"
        paired = f"{r.paired_ratio:.3f}" if r.paired_ratio is not None else "-"
        cpu = f"{r.cpu_us_per_task:.0f}" if r.cpu_us_per_task is not None else "-"
        main = f"{r.main_cpu_us_per_task:.0f}" if r.main_cpu_us_per_task is not None else "-"
        spread = f"{r.min_tasks_per_s:.0f}–{r.max_tasks_per_s:.0f}"
        lines.append(f"{r.variant:<9} {r.failing_percent:>6}% {r.median_tasks_per_s:>15.0f} "
                     f"{spread:>13} {r.us_per_task:>8.0f} {ratio:>8} {paired:>7} {cpu:>12} "
                     f"{main:>5}")
    lines.append("vs bare: ratio of medians; paired: median of per-rep ratios to bare; "
                 "CPU µs/task: user+system CPU of every worker process in the window; "
                 "main: the part of it in the worker's main process.")
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


def production_targets(rows: list[Row]) -> list[dict[str, Any]]:
    """Issue 13's targets for each of ``observed`` and ``guarded`` measured with bare."""
    found = []
    for row in rows:
        minimum = PRODUCTION_TARGETS.get(row.failing_percent)
        if (row.variant in PRODUCTION_VARIANTS and minimum is not None
                and row.paired_ratio is not None and row.ratio_to_bare is not None):
            found.append({"variant": row.variant, "failing_percent": row.failing_percent,
                          "minimum_ratio": minimum, "ratio_to_bare": row.ratio_to_bare,
                          "paired_ratio": row.paired_ratio,
                          "met": row.paired_ratio >= minimum})
    return found


def paired(runs: list[Run], variant: str, reference: str, workload: int) -> float | None:
    """Median over reps of ``variant``'s throughput / ``reference``'s in the same rep."""
    ref = {r.rep: r.tasks_per_s for r in runs
           if r.variant == reference and r.failing_percent == workload}
    ratios = [r.tasks_per_s / ref[r.rep] for r in runs
              if r.variant == variant and r.failing_percent == workload and r.rep in ref]
    return statistics.median(ratios) if ratios else None


def floor_lines(runs: list[Run], workloads: list[int]) -> list[str]:
    """``floor`` against bare (what one span and one histogram observation cost) and
    ``guarded`` against ``floor`` (what the guard costs above them), by workload."""
    lines = []
    for workload in workloads:
        floor = paired(runs, "floor", "bare", workload)
        above = paired(runs, "guarded", "floor", workload)
        if floor is None or above is None:
            continue
        lines.append(f"floor at {workload}% failing: floor/bare {floor:.3f} paired (one SDK "
                     f"span and one histogram observation, nothing else); guarded/floor "
                     f"{above:.3f} paired (the guard's own cost above them)")
    return lines


def target_line(found: dict[str, Any]) -> str:
    return (f"target {found['variant']}/bare >= {found['minimum_ratio']:.2f} at "
            f"{found['failing_percent']}% failing (paired {found['paired_ratio']:.3f}, "
            f"ratio of medians {found['ratio_to_bare']:.3f}): "
            + ("met" if found["met"] else "MISSED"))
