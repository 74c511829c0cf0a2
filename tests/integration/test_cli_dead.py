"""``dead list|show|replay|purge`` against a real worker and a private Redis.

Given-up tasks of ``tests.apps.cli_app`` fill the dead-letter stream; ``cli.sync`` keeps
failing while a Redis key is set, so a test can flip it and replay the task for real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery import Celery
from click.testing import CliRunner, Result

from telemetry_guard.cli import celery_guard
from tests.apps.cli_app import BROKEN_KEY, DONE_KEY
from tests.servers import RedisServer, free_port, start_redis, wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TELEMETRY_GUARD = str(BIN / "telemetry-guard")
CELERY = str(BIN / "celery")
DEAD = "telemetry_guard:dead"
ERRORS = "telemetry_guard:errors"
APP = ["-A", "tests.apps.cli_app"]


@dataclass
class Fleet:
    """A worker on a private Redis, and ways to run the CLI against it."""

    url: str
    env: dict[str, str]
    client: redis.Redis
    app: Celery

    def run(self, *argv: str, program: str = TELEMETRY_GUARD) -> subprocess.CompletedProcess[str]:
        """The CLI as a user runs it (no stdin, as in CI)."""
        return subprocess.run([program, *argv], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=30, stdin=subprocess.DEVNULL)

    def invoke(self, *argv: str, app: Celery | None = None, stdin: str | None = None) -> Result:
        """The CLI in-process, handed the app the way ``celery -A proj guard`` hands it."""
        return CliRunner().invoke(celery_guard, list(argv), input=stdin,
                                  obj=SimpleNamespace(app=app or self.app))

    def dead_letter(self, task: str, *args: Any, **kwargs: Any) -> tuple[str, str]:
        """Run a task that gives up; its task id and dead-letter entry id."""
        task_id = str(self.app.send_task(task, args, kwargs, queue="cli").id)
        return task_id, wait_for(lambda: self.entry_of(task_id), timeout=15)

    def entry_of(self, task_id: str) -> str | None:
        """The dead-letter entry id of a task id, if there is one."""
        for entry_id, fields in self.client.xrange(DEAD):
            if json.loads(fields[b"record"])["task_id"] == task_id:
                return str(entry_id.decode())
        return None

    def exists(self, entry_id: str) -> bool:
        return bool(self.client.xrange(DEAD, entry_id, entry_id))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    server: RedisServer = start_redis()
    url = f"{server.url}/0"
    env = dict(os.environ, TG_TEST_BROKER=url, PYTHONPATH=str(ROOT))
    app = Celery("cli-dead-tests", broker=url, set_as_current=False)
    app.conf.update(task_default_queue="cli", telemetry_guard_tracing=False)
    log = (tmp_path_factory.mktemp("cli-dead") / "worker.log").open("wb")
    worker = subprocess.Popen(
        [CELERY, *APP, "worker", "-P", "solo", "-Q", "cli", "-l", "WARNING",
         "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield Fleet(url, env, server.client(0), app)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        guard = getattr(app, "_telemetry_guard", None)
        if guard is not None:
            guard.close()
        server.stop()


@pytest.fixture(autouse=True)
def sync_is_broken(fleet: Fleet) -> None:
    """``cli.sync`` fails at the start of every test."""
    fleet.client.set(BROKEN_KEY, 1)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def one_line_error(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    assert "Traceback" not in text
    return lines[0]


def test_list_and_show_never_print_the_unredacted_arguments(fleet: Fleet) -> None:
    """Only `dead show --show-args` prints the stored secret; list and show hide it."""
    task_id, entry_id = fleet.dead_letter("cli.sync", "acct-secret", password="hunter2")
    listed = fleet.run(*APP, "dead", "list", "--task", "cli.sync", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = [r for r in json_lines(listed.stdout) if r["id"] == entry_id]
    assert (row["task_id"], row["replayable"], row["kwargs"]) == (
        task_id, True, {"password": "[REDACTED]"})
    table = fleet.run(*APP, "dead", "list")
    assert entry_id in table.stdout and "REPLAYABLE" in table.stdout
    shown = fleet.run(*APP, "dead", "show", entry_id)
    assert shown.returncode == 0, shown.stderr
    assert "use --show-args" in shown.stdout
    for output in (listed.stdout, table.stdout, shown.stdout):
        assert "hunter2" not in output
    revealed = fleet.invoke("dead", "show", entry_id, "--show-args", "--json")
    [record] = json_lines(revealed.stdout)
    assert record["replay"]["kwargs"] == {"password": "hunter2"}
    assert record["replay"]["args"] == ["acct-secret"]


def test_dry_run_prints_what_would_be_sent_and_changes_nothing(fleet: Fleet) -> None:
    """`dead replay ID --dry-run`: redacted plan, exit 0, entry kept, nothing published."""
    _, entry_id = fleet.dead_letter("cli.sync", "acct-dry", password="hunter2")
    errors_before = fleet.client.xlen(ERRORS)
    done = fleet.run(*APP, "dead", "replay", entry_id, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "would send" in done.stdout and "[REDACTED]" in done.stdout
    assert "hunter2" not in done.stdout + done.stderr
    assert "nothing sent" in done.stderr
    time.sleep(1.0)  # a replayed cli.sync would fail again (still broken) and be logged
    assert fleet.exists(entry_id)
    assert fleet.client.xlen(ERRORS) == errors_before
    assert fleet.client.llen("cli") == 0


def test_replay_without_yes_and_without_a_terminal_aborts_with_exit_1(fleet: Fleet) -> None:
    """No stdin to confirm on: nothing is sent, the entry stays, exit 1."""
    _, entry_id = fleet.dead_letter("cli.sync", "acct-ask")
    done = fleet.run(*APP, "dead", "replay", entry_id)
    assert done.returncode == 1
    assert "aborted: nothing sent" in done.stderr
    assert fleet.exists(entry_id)
    answered_no = fleet.invoke("dead", "replay", entry_id, stdin="n\n")
    assert answered_no.exit_code == 1 and fleet.exists(entry_id)


def test_replay_reruns_a_given_up_task_that_now_succeeds_and_removes_its_entry(
        fleet: Fleet) -> None:
    """`celery -A app guard dead replay ID --yes` after the fix: the task runs, the entry goes."""
    task_id, entry_id = fleet.dead_letter("cli.sync", "acct-9", password="hunter2")
    fleet.client.delete(BROKEN_KEY)  # the upstream is fixed
    done = fleet.run(*APP, "guard", "dead", "replay", entry_id, "--yes", program=CELERY)
    assert done.returncode == 0, done.stderr
    assert "replayed" in done.stdout and "hunter2" not in done.stdout
    assert not fleet.exists(entry_id)
    synced = wait_for(lambda: [json.loads(v) for v in fleet.client.lrange(DONE_KEY, 0, -1)
                               if json.loads(v)["account"] == "acct-9"], timeout=15)
    assert synced == [{"account": "acct-9", "replay_of": task_id}]


def test_replay_by_filter_sends_the_original_arguments_oldest_first(fleet: Fleet) -> None:
    """`dead replay --task X --since 5m --yes`: each entry is re-sent as it was, then removed."""
    firsts = [fleet.dead_letter("cli.charge", order, "declined") for order in (701, 702)]
    result = fleet.invoke("--json", "dead", "replay", "--task", "cli.charge", "--since", "5m",
                          "--yes")
    assert result.exit_code == 0, result.output
    rows = json_lines(result.stdout)
    assert [(r["id"], r["replay_of"], r["outcome"]) for r in rows] == [
        (entry_id, task_id, "replayed") for task_id, entry_id in firsts]
    assert not any(fleet.exists(entry_id) for _, entry_id in firsts)
    # still declined: each replay gives up again, as a new dead letter with the same args
    again = [wait_for(lambda r=r: fleet.entry_of(r["new_id"]), timeout=15) for r in rows]
    records = [json.loads(fleet.client.xrange(DEAD, e, e)[0][1][b"record"]) for e in again]
    assert [r["args"] for r in records] == [[701, "declined"], [702, "declined"]]


def test_a_dead_broker_fails_fast_and_keeps_the_entries(fleet: Fleet) -> None:
    """No broker: exit 1 within seconds, one line, nothing removed."""
    _, entry_id = fleet.dead_letter("cli.sync", "acct-down")
    app = Celery("no-broker", broker=f"redis://127.0.0.1:{free_port()}/0", set_as_current=False)
    app.conf.update(telemetry_guard_redis_url=fleet.url, telemetry_guard_tracing=False)
    try:
        started = time.monotonic()
        result = fleet.invoke("dead", "replay", entry_id, "--yes", app=app)
        assert time.monotonic() - started < 10
        assert result.exit_code == 1
        assert "cannot reach the broker" in one_line_error(result.output)
        assert fleet.exists(entry_id)
    finally:
        app._telemetry_guard.close()


def test_purge_by_task_age_and_id_with_confirmation(fleet: Fleet) -> None:
    """--dry-run and --older-than 7d keep recent entries; no confirmation keeps them; --yes not."""
    _, entry_id = fleet.dead_letter("cli.report", 1)
    dry = fleet.invoke("dead", "purge", "--task", "cli.report", "--dry-run")
    assert dry.exit_code == 0 and entry_id in dry.output and fleet.exists(entry_id)
    old = fleet.invoke("dead", "purge", "--older-than", "7d", "--yes")
    assert old.exit_code == 0 and old.output.strip() == "(none)"
    unconfirmed = fleet.invoke("dead", "purge", entry_id)
    assert unconfirmed.exit_code == 1 and fleet.exists(entry_id)
    purged = fleet.invoke("dead", "purge", entry_id, "--yes")
    assert purged.exit_code == 0, purged.output
    assert "removed 1 dead letter(s)" in purged.output
    assert not fleet.exists(entry_id)


def test_unknown_ids_are_one_line_usage_errors_and_send_nothing(fleet: Fleet) -> None:
    """An id that is not a dead letter: exit 2 before anything is sent or removed."""
    _, entry_id = fleet.dead_letter("cli.sync", "acct-unknown")
    done = fleet.run(*APP, "dead", "replay", entry_id, "1-0", "--yes")
    assert done.returncode == 2
    assert "no dead letter with id 1-0" in one_line_error(done.stderr)
    assert fleet.exists(entry_id)
    shown = fleet.invoke("dead", "show", "1-0")
    assert shown.exit_code == 2 and "no dead letter" in one_line_error(shown.output)
    both = fleet.invoke("dead", "replay", entry_id, "--task", "cli.sync")
    assert both.exit_code == 2 and "not both" in one_line_error(both.output)


def test_notification_and_unreplayable_dead_letters(fleet: Fleet) -> None:
    """notify.py's dead letters replay onto the notification queue; unstorable ones are kept."""
    payload = {"task_name": "cli.report", "exception_type": "ValueError", "severity": "high",
               "message": "m", "time": "2024-05-01T12:00:00.000+00:00"}
    notify_id = fleet.client.xadd(DEAD, {"record": json.dumps(payload), "replay": json.dumps(
        {"task": "telemetry_guard.notify", "args": [payload], "kwargs": {}})}).decode()
    broken_id = fleet.client.xadd(DEAD, {"record": json.dumps(payload), "replay": json.dumps(
        {"task": "cli.report", "id": "x", "replayable": False, "repr": "<Opaque>"})}).decode()
    unknown = fleet.invoke("--json", "dead", "replay", notify_id, "--dry-run")
    [row] = json_lines(unknown.stdout)  # the app sends no mail: it has no notify task
    assert row["outcome"] == "refused: task telemetry_guard.notify is not registered in this app"
    mailer = Celery("mailer", broker=fleet.url, set_as_current=False)
    mailer.conf.update(telemetry_guard_tracing=False, telemetry_guard_email={
        "host": "127.0.0.1", "port": free_port(), "sender": "tg@example.com",
        "recipients": ["ops@example.com"]})
    try:
        dry = fleet.invoke("--json", "dead", "replay", notify_id, "--dry-run", app=mailer)
        listed = {r["id"]: r for r in json_lines(
            fleet.invoke("--json", "dead", "list", app=mailer).stdout)}
    finally:
        mailer._telemetry_guard.close()
    [row] = json_lines(dry.stdout)
    assert (row["task"], row["queue"], row["outcome"]) == (
        "telemetry_guard.notify", "telemetry_guard.notifications", "would send")
    assert listed[notify_id]["replayable"] and not listed[broken_id]["replayable"]
    skipped = fleet.invoke("--json", "dead", "replay", broken_id, "--yes")
    assert skipped.exit_code == 1
    assert json_lines(skipped.stdout)[0]["outcome"] == (
        "refused: arguments could not be stored")
    assert fleet.exists(broken_id)
    fleet.client.xdel(DEAD, notify_id, broken_id)
