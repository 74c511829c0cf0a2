"""``telemetry-guard check``: the doctor, run like a user against private servers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.integration.test_cli_breakers import CliWorker, cli_env, json_lines, run_cli
from tests.servers import free_port
from tests.smtp_server import CapturingSMTPServer

PASSWORD = "s3cret-Hunter2-pw"
NOTIFICATIONS = "telemetry_guard.notifications"


def findings(stdout: str) -> dict[str, dict[str, Any]]:
    return {row["check"]: row for row in json_lines(stdout)}


@pytest.fixture
def smtp() -> Iterator[CapturingSMTPServer]:
    with CapturingSMTPServer(credentials=("guard", PASSWORD)) as server:
        yield server


def email_env(smtp: CapturingSMTPServer, tmp_path: Path) -> dict[str, str]:
    """E-mail configured with a password, and a prefork metrics directory that is writable."""
    metrics = tmp_path / "prom"
    metrics.mkdir()
    return {"TELEMETRY_GUARD_EMAIL": json.dumps(smtp.settings(user="guard", password=PASSWORD)),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics)}


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    app = Celery("check-producer", broker=redis_url, backend=redis_url, set_as_current=False)
    yield app
    app.close()


def test_redis_down_fails_with_a_clear_message_and_exit_code_1(tmp_path: Path) -> None:
    """Broker and Redis on a port nothing listens on: both `fail`, with the fix; exit 1."""
    down = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    env = cli_env(down)
    done = run_cli(env, "check")
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    redis_line = next(i for i, line in enumerate(lines) if line.split()[1:2] == ["redis"])
    assert lines[redis_line].startswith("fail  redis")
    assert "unreachable" in lines[redis_line] and "Connection refused" in lines[redis_line]
    assert lines[redis_line + 1].split()[0] == "fix:"
    assert "Traceback" not in done.stderr
    assert PASSWORD not in done.stdout + done.stderr

    as_json = run_cli(env, "check", "--json")
    assert as_json.returncode == 1
    rows = findings(as_json.stdout)
    assert rows["redis"]["status"] == rows["broker"]["status"] == "fail"
    assert "start Redis" in rows["redis"]["fix"]
    assert rows["redis"]["detail"].startswith("redis://***@127.0.0.1:")
    assert PASSWORD not in as_json.stdout + as_json.stderr


def test_no_worker_on_the_notification_queue_fails_when_email_is_configured(
        redis_url: str, smtp: CapturingSMTPServer, tmp_path: Path) -> None:
    """E-mail configured and no worker at all: the notification queue check fails; exit 1."""
    env = cli_env(redis_url, **email_env(smtp, tmp_path))
    done = run_cli(env, "--json", "check")
    assert done.returncode == 1, done.stderr
    rows = findings(done.stdout)
    failed = {name for name, row in rows.items() if row["status"] == "fail"}
    assert failed == {"notification queue"}, rows
    assert NOTIFICATIONS in rows["notification queue"]["detail"]
    assert f"-Q {NOTIFICATIONS}" in rows["notification queue"]["fix"]
    assert PASSWORD not in done.stdout + done.stderr


def test_everything_ok_with_redis_a_notification_worker_a_metrics_dir_and_smtp(
        redis_url: str, smtp: CapturingSMTPServer, tmp_path: Path, producer: Celery) -> None:
    """All seven checks ok and exit 0; SMTP logged in without sending mail; no password shown."""
    env = cli_env(redis_url, **email_env(smtp, tmp_path))
    worker = CliWorker(env, f"{NOTIFICATIONS},celery", tmp_path, "check-worker")
    try:
        worker.wait_ready(producer)
        done = run_cli(env, "check")
        as_json = run_cli(env, "check", "--json")
    finally:
        worker.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    statuses = [line.split()[0] for line in done.stdout.splitlines()[:-1]]
    assert statuses == ["ok"] * 7, done.stdout
    assert done.stdout.splitlines()[-1] == "7 checks: 7 ok, 0 warn, 0 fail"

    assert as_json.returncode == 0
    rows = findings(as_json.stdout)
    assert {row["status"] for row in rows.values()} == {"ok"}, rows
    assert "login as guard" in rows["smtp"]["detail"]
    assert worker.nodename in rows["notification queue"]["detail"]
    assert "1 worker(s)" in rows["clock skew"]["detail"]
    assert smtp.messages == []
    for out in (done.stdout, done.stderr, as_json.stdout, as_json.stderr):
        assert PASSWORD not in out


def test_smtp_login_refused_fails_without_showing_the_configured_password(
        redis_url: str, smtp: CapturingSMTPServer, tmp_path: Path) -> None:
    """A wrong SMTP password: `fail` on the login step; neither password appears."""
    wrong = "Wr0ng-passw0rd-xyz"
    env = cli_env(redis_url, **email_env(smtp, tmp_path))
    env["TELEMETRY_GUARD_EMAIL"] = json.dumps(smtp.settings(user="guard", password=wrong))
    done = run_cli(env, "check", "--json")
    assert done.returncode == 1
    row = findings(done.stdout)["smtp"]
    assert row["status"] == "fail"
    assert "login as guard failed: SMTPAuthenticationError" in row["detail"]
    assert wrong not in done.stdout + done.stderr and PASSWORD not in done.stdout
    assert smtp.messages == []
