"""Tests for telemetry_guard.sinks.exposition: folding dead processes' multiprocess metric files."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from telemetry_guard.sinks.exposition import archive_dead_processes, clean_multiproc_dir

BUCKETS = (0.1, 1.0, 10.0)

#: A child process in multiprocess mode: count jobs and observe latencies, then exit.
CHILD = f"""
import os
import sys
from prometheus_client import Counter, Gauge, Histogram
jobs = Counter("jobs", "Jobs done.", ["kind"])
latency = Histogram("latency_seconds", "Latency.", ["kind"], buckets={BUCKETS!r})
live = Gauge("workers", "Live workers.", multiprocess_mode="livesum")
live.inc()
n = int(sys.argv[1])
jobs.labels("a").inc(n)
jobs.labels("b").inc(1)
for value in [float(v) for v in sys.argv[2:]]:
    latency.labels("a").observe(value)
print(os.getpid())
"""


def run_child(path: Path, jobs: int, observations: list[float]) -> int:
    """Run a short-lived process writing metric files into ``path``; return its (dead) pid."""
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(path))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(jobs), *map(str, observations)],
        env=env, capture_output=True, text=True, timeout=60, check=True)
    assert proc.stderr == ""
    pid = int(proc.stdout)
    assert (path / f"counter_{pid}.db").exists()
    return pid


def collect(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the multiprocess collector reads from ``path``, keyed by name and labels."""
    metrics = MultiProcessCollector.merge(glob.glob(str(path / "*.db")), accumulate=True)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for m in metrics for s in m.samples}


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    """One sample's value from ``collect()``'s result."""
    return samples[(name, tuple(sorted(labels.items())))]


def per_pid_files(path: Path) -> list[str]:
    """Metric files that belong to one process (not the merged ones)."""
    return sorted(n for n in os.listdir(path) if not n.endswith("_merged.db"))


def test_dead_processes_are_folded_into_merged_files(tmp_path: Path) -> None:
    """Three exited processes' counter and histogram files become the two merged files."""
    for jobs in (1, 2, 3):
        run_child(tmp_path, jobs, [0.05])
    assert len(per_pid_files(tmp_path)) == 9  # counter, histogram, live gauge per process
    folded = archive_dead_processes(str(tmp_path))
    assert folded == 6
    assert per_pid_files(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["counter_merged.db", "histogram_merged.db"]


def test_merged_counter_is_the_sum_of_the_processes(tmp_path: Path) -> None:
    """After folding, the counter reads as the sum of the three processes' counts per label."""
    for jobs in (1, 2, 3):
        run_child(tmp_path, jobs, [])
    before = collect(tmp_path)
    archive_dead_processes(str(tmp_path))
    after = collect(tmp_path)
    assert sample(after, "jobs_total", kind="a") == 6
    assert sample(after, "jobs_total", kind="b") == 3
    assert sample(before, "jobs_total", kind="a") == 6


def test_merged_histogram_keeps_count_sum_and_buckets(tmp_path: Path) -> None:
    """After folding, the histogram's _count, _sum and cumulative buckets are the totals."""
    run_child(tmp_path, 1, [0.05, 0.5])
    run_child(tmp_path, 1, [5.0])
    run_child(tmp_path, 1, [0.05, 50.0])
    before = collect(tmp_path)
    archive_dead_processes(str(tmp_path))
    after = collect(tmp_path)
    assert sample(after, "latency_seconds_count", kind="a") == 5
    assert sample(after, "latency_seconds_sum", kind="a") == pytest.approx(55.6)
    buckets = {le: sample(after, "latency_seconds_bucket", kind="a", le=le)
               for le in ("0.1", "1.0", "10.0", "+Inf")}
    assert buckets == {"0.1": 2, "1.0": 3, "10.0": 4, "+Inf": 5}
    histogram = {k: v for k, v in after.items() if k[0].startswith("latency_seconds")}
    assert histogram == pytest.approx(
        {k: v for k, v in before.items() if k[0].startswith("latency_seconds")})


def test_a_later_dead_process_adds_to_the_merged_totals(tmp_path: Path) -> None:
    """Folding again after a fourth process gives merged totals plus the new process's counts."""
    for jobs in (1, 2, 3):
        run_child(tmp_path, jobs, [0.05])
    archive_dead_processes(str(tmp_path))
    run_child(tmp_path, 10, [0.5, 20.0])
    assert archive_dead_processes(str(tmp_path)) == 2
    assert sorted(os.listdir(tmp_path)) == ["counter_merged.db", "histogram_merged.db"]
    samples = collect(tmp_path)
    assert sample(samples, "jobs_total", kind="a") == 16
    assert sample(samples, "jobs_total", kind="b") == 4
    assert sample(samples, "latency_seconds_count", kind="a") == 5
    assert sample(samples, "latency_seconds_sum", kind="a") == pytest.approx(0.05 * 3 + 20.5)
    assert sample(samples, "latency_seconds_bucket", kind="a", le="0.1") == 3
    assert sample(samples, "latency_seconds_bucket", kind="a", le="1.0") == 4
    assert sample(samples, "latency_seconds_bucket", kind="a", le="+Inf") == 5


def test_archiving_twice_without_new_processes_changes_nothing(tmp_path: Path) -> None:
    """A second pass with no newly dead process folds nothing and keeps the totals."""
    run_child(tmp_path, 4, [0.5])
    archive_dead_processes(str(tmp_path))
    first = collect(tmp_path)
    assert archive_dead_processes(str(tmp_path)) == 0
    assert collect(tmp_path) == pytest.approx(first)


def test_files_of_a_live_process_are_left_alone(tmp_path: Path) -> None:
    """Files named after a running process's pid are not folded or removed."""
    dead = run_child(tmp_path, 2, [0.5])
    live = tmp_path / f"counter_{os.getpid()}.db"
    shutil.copy(tmp_path / f"counter_{dead}.db", live)
    archive_dead_processes(str(tmp_path))
    assert live.exists()
    assert sample(collect(tmp_path), "jobs_total", kind="a") == 4


def test_clean_multiproc_dir_removes_stale_db_files(tmp_path: Path) -> None:
    """Every *.db file of an earlier run is removed; other files stay."""
    run_child(tmp_path, 1, [0.5])
    archive_dead_processes(str(tmp_path))
    run_child(tmp_path, 1, [0.5])
    (tmp_path / "notes.txt").write_text("keep me")
    clean_multiproc_dir(str(tmp_path))
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_clean_multiproc_dir_creates_a_missing_directory(tmp_path: Path) -> None:
    """A directory that does not exist yet is created."""
    path = tmp_path / "metrics" / "multiproc"
    clean_multiproc_dir(str(path))
    assert path.is_dir()
