"""``python -m telemetry_guard.demo`` end to end, as a newcomer runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from telemetry_guard.demo.workload import FAKE_API_KEY, FAKE_PASSWORD
from tests.servers import free_port

#: A run that takes longer than this is stopped and fails the test.
HARD_TIMEOUT = 40.0
#: Sample names that /metrics must carry while the demo runs (with at least one sample).
METRICS = ("telemetry_guard_task_failures_total", "telemetry_guard_task_retries_total",
           "telemetry_guard_task_giveups_total", "telemetry_guard_breaker_state",
           "telemetry_guard_breaker_transitions_total", "telemetry_guard_notifications_total")
EVENTS = {"task.failed", "task.retry_scheduled", "task.gave_up", "breaker.state_changed",
          "notification.sent"}
SUBJECT = "Subject: [CRITICAL] demo.reconcile_ledger: RuntimeError"


@dataclass
class DemoRun:
    """What one demo subprocess did: exit code, output, scrapes, log events, wall time."""

    returncode: int
    stdout: str
    stderr: str
    scrapes: list[str]
    events: list[dict[str, object]]
    log_text: str
    seconds: float


def run_demo(tmp_path: Path, duration: float, *, path_env: str | None = None) -> DemoRun:
    """Run the demo for ``duration`` s, scraping its /metrics every half second meanwhile."""
    port = free_port()
    log_file = tmp_path / "demo-events.jsonl"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TELEMETRY_GUARD_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    if path_env is not None:
        env["PATH"] = path_env
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    started = time.monotonic()
    with out_path.open("w") as out, err_path.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "telemetry_guard.demo", "--duration", str(duration),
             "--log-file", str(log_file), "--metrics-port", str(port)],
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
            cwd=Path(__file__).resolve().parents[2])
        scrapes: list[str] = []
        try:
            while process.poll() is None:
                if time.monotonic() - started > HARD_TIMEOUT:
                    raise AssertionError(f"the demo ran longer than {HARD_TIMEOUT:g} s")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                                timeout=2) as response:
                        scrapes.append(response.read().decode())
                except OSError:
                    pass  # not serving yet, or already stopped
                time.sleep(0.5)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    seconds = time.monotonic() - started
    log_text = log_file.read_text() if log_file.exists() else ""
    events = [json.loads(line) for line in log_text.splitlines() if line.strip()]
    return DemoRun(process.returncode, out_path.read_text(), err_path.read_text(), scrapes,
                   events, log_text, seconds)


def has_sample(scrape: str, name: str) -> bool:
    """Whether the exposition text has at least one sample of ``name``."""
    return re.search(rf"^{re.escape(name)}(\{{|\s)", scrape, re.M) is not None


def summary_count(stdout: str, label: str) -> int:
    """A count from the summary's ``label   N ...`` row."""
    found = re.search(rf"^  {re.escape(label)}\s+(\d+)", stdout, re.M)
    assert found, f"no {label!r} row in the summary:\n{stdout}"
    return int(found.group(1))


def transitions(stdout: str) -> list[tuple[str, str]]:
    """The summary's breaker transitions, in order, as (from, to)."""
    block = stdout.split("breaker transitions:", 1)[1].split("\n\n", 1)[0]
    return re.findall(r": (\w+) -> (\w+)", block)


def test_demo_shows_failures_retries_breaker_cycle_and_mail(tmp_path: Path) -> None:
    """10 s of demo: exit 0; /metrics, log file, mail and summary show every kind of fact."""
    run = run_demo(tmp_path, 10)

    assert run.returncode == 0, run.stdout + run.stderr
    if shutil.which("redis-server"):
        assert "on a private redis-server" in run.stdout
    # /metrics, scraped while the demo ran, carried every telemetry name with samples.
    assert run.scrapes, "/metrics never answered"
    last = run.scrapes[-1]
    missing = [name for name in METRICS if not has_sample(last, name)]
    assert not missing, f"/metrics lacked {missing}"
    # The log file holds the events, as JSON lines.
    assert EVENTS <= {e["event"] for e in run.events}
    # The SMTP catcher received the CRITICAL mail and the demo printed it.
    assert SUBJECT in run.stdout
    assert "mail caught: [CRITICAL] demo.reconcile_ledger: RuntimeError" in run.stdout
    # The breaker opened and closed again within the 10 s.
    seen = transitions(run.stdout)
    assert ("closed", "open") in seen and ("half_open", "closed") in seen, run.stdout
    assert seen.index(("closed", "open")) < seen.index(("half_open", "closed"))
    assert summary_count(run.stdout, "failures") > 0
    assert summary_count(run.stdout, "retries scheduled") > 0
    assert summary_count(run.stdout, "give-ups") > 0
    # Secrets passed as keyword arguments never reach the output or the log.
    assert "[REDACTED]" in run.stdout
    for secret in (FAKE_PASSWORD, FAKE_API_KEY):
        assert secret not in run.stdout and secret not in run.log_text
    assert str(tmp_path / "demo-events.jsonl") in run.stdout


def test_demo_falls_back_to_the_memory_transport_without_redis_server(tmp_path: Path) -> None:
    """With no redis-server on PATH the demo runs on the memory transport and counts failures."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    run = run_demo(tmp_path, 6, path_env=str(bin_dir))

    assert run.returncode == 0, run.stdout + run.stderr
    assert "Celery's in-memory transport" in run.stdout
    assert summary_count(run.stdout, "failures") > 0
    assert summary_count(run.stdout, "tasks succeeded") > 0
    assert SUBJECT in run.stdout
    assert {"task.failed", "task.gave_up"} <= {e["event"] for e in run.events}


@pytest.mark.parametrize("argv", [["--duration", "0.5"], ["--metrics-port", "70000"]])
def test_demo_refuses_bad_options_with_a_usage_error(argv: list[str]) -> None:
    """A duration below 1 s or a port out of range: exit 2 and a one-line error, no traceback."""
    done = subprocess.run([sys.executable, "-m", "telemetry_guard.demo", *argv],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "Error: Invalid value" in done.stderr and "Traceback" not in done.stderr
