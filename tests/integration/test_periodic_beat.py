"""Periodic monitoring with a real ``celery beat`` and a real ``celery worker`` (subprocesses)
on a private Redis: runs recorded, beat down, missed, overlapping; RedBeat's entries."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from telemetry_guard.cli import main
from tests.periodic_processes import APP, Processes, periodic_processes
from tests.servers import wait_for


@pytest.fixture
def processes(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[Processes]:
    yield from periodic_processes(redis_url, tmp_path, monkeypatch)


def periodic_cli(*args: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]], str]:
    """``telemetry-guard -A APP periodic``: beat's status, rows by task, the table's text."""
    runner = CliRunner()
    table = runner.invoke(main, ["-A", APP, "periodic", *args])
    assert table.exit_code == 0, table.output
    result = runner.invoke(main, ["-A", APP, "--json", "periodic"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    return lines[0]["beat"], {row["task"]: row for row in lines[1:]}, table.output


def state_of(task: str) -> str | None:
    return periodic_cli()[1].get(task, {}).get("state")


def error_records(redis_url: str, exception_type: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    records = [json.loads(fields[b"record"])
               for _, fields in client.xrange("telemetry_guard:errors")]
    return [r for r in records if r["exception_type"] == exception_type]


def beat_metrics(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_runs_beat_down_missed_and_overlapping(processes: Processes, redis_url: str) -> None:
    """One beat and one worker: runs are recorded and ok; a slow task overlaps; beat stopped
    is "beat down" (told once, no missed run told meanwhile); worker stopped is "missed"
    (told once for that window)."""
    processes.start_worker()
    processes.start_beat()

    def ticked() -> bool:
        beat, rows, _ = periodic_cli()
        tick = rows.get("periodic.tick", {})
        return (beat["status"] == "alive" and tick.get("state") == "ok"
                and tick.get("last_success") is not None)

    wait_for(ticked, timeout=20, interval=0.3)
    first = periodic_cli()[1]["periodic.tick"]
    wait_for(lambda: periodic_cli()[1]["periodic.tick"]["last_run"] > first["last_run"]
             and periodic_cli()[1]["periodic.tick"]["last_success"] > first["last_success"],
             timeout=5, interval=0.2)
    beat, rows, table = periodic_cli()
    assert table.splitlines()[0].startswith("beat: alive")
    assert rows["periodic.tick"]["schedule"] == "every 1s"
    assert rows["periodic.tick"]["interval_s"] == 1.0
    assert rows["periodic.tick"]["tolerance"] == 2.0       # the app's setting
    assert rows["periodic.slow"]["tolerance"] == 3.0       # the task's own option
    assert "periodic.plain" not in rows
    assert 0 <= rows["periodic.tick"]["last_start_delay_s"] < 1.0  # from beat's header

    # beat stores the deadline counted from the last run: last run + interval x tolerance
    def deadline_of_last_run() -> bool:
        tick = periodic_cli()[1]["periodic.tick"]
        return (tick["missed_after"] is not None
                and abs(tick["missed_after"] - (tick["last_run"] + 1.0 * 2.0)) < 1e-3)

    wait_for(deadline_of_last_run, timeout=5, interval=0.1)
    tick_label = frozenset({("task", "periodic.tick")})
    wait_for(lambda: ("telemetry_guard_periodic_missed_after_timestamp_seconds", tick_label)
             in beat_metrics(processes.metrics_port), timeout=5, interval=0.1)

    # the slow task runs past its interval: overlapping, counted in beat's /metrics
    wait_for(lambda: state_of("periodic.slow") == "overlapping", timeout=10, interval=0.3)
    samples = beat_metrics(processes.metrics_port)
    slow = frozenset({("task", "periodic.slow")})
    assert samples[("telemetry_guard_periodic_overlaps_total", slow)] > 0
    assert samples[("telemetry_guard_periodic_expected_interval_seconds", slow)] == 1.0
    assert samples[("telemetry_guard_beat_heartbeat_interval_seconds", frozenset())] == 0.5
    assert ("telemetry_guard_periodic_last_success_timestamp_seconds",
            frozenset({("task", "periodic.tick")})) in samples
    # the worker's /metrics (prefork, multiprocess mode) reads the same state
    worker_samples = beat_metrics(processes.worker_metrics_port)
    assert worker_samples[("telemetry_guard_periodic_expected_interval_seconds", slow)] == 1.0

    # beat stopped: "beat down", one BeatDown event, no missed run told while it is down
    processes.stop_beat()
    wait_for(lambda: periodic_cli()[0]["status"] == "down", timeout=10, interval=0.3)
    wait_for(lambda: state_of("periodic.tick") == "beat down", timeout=10, interval=0.3)
    assert "beat: down" in periodic_cli()[2]
    wait_for(lambda: error_records(redis_url, "BeatDown"), timeout=10, interval=0.2)
    time.sleep(2.5)  # more than two watcher periods
    beat_down = error_records(redis_url, "BeatDown")
    assert len(beat_down) == 1
    assert beat_down[0]["task_name"] == "celery.beat"
    assert beat_down[0]["severity"] == "high"
    assert beat_down[0]["reason"] == "beat_down"
    assert error_records(redis_url, "PeriodicRunMissed") == []

    # beat back, worker stopped: "missed", told once for that window
    processes.start_beat()
    wait_for(lambda: periodic_cli()[0]["status"] == "alive", timeout=20, interval=0.3)
    wait_for(lambda: state_of("periodic.tick") == "ok", timeout=10, interval=0.3)
    processes.stop_worker()
    wait_for(lambda: state_of("periodic.tick") == "missed", timeout=15, interval=0.3)
    wait_for(lambda: [r for r in error_records(redis_url, "PeriodicRunMissed")
                      if r["task_name"] == "periodic.tick"], timeout=10, interval=0.2)
    time.sleep(2.5)
    missed = [r for r in error_records(redis_url, "PeriodicRunMissed")
              if r["task_name"] == "periodic.tick"]
    assert len(missed) == 1
    assert missed[0]["reason"] == "periodic_missed"
    assert missed[0]["decision"] == "give_up"
    assert "periodic.tick" in missed[0]["message"]
    assert periodic_cli()[1]["periodic.tick"]["last_run"] < time.time() - 2.0


def test_redbeat_entries_are_registered(processes: Processes) -> None:
    """A beat with RedBeat's scheduler registers its entries: the CLI lists them."""
    processes.start_beat("-S", "redbeat.RedBeatScheduler")
    wait_for(lambda: {"periodic.tick", "periodic.slow"} <= set(periodic_cli()[1]),
             timeout=20, interval=0.3)
    beat, rows, _ = periodic_cli()
    assert beat["status"] == "alive"
    assert rows["periodic.tick"]["schedule"] == "every 1s"
    assert rows["periodic.tick"]["state"] in ("waiting", "ok", "missed")
