"""``dead list|show|replay|purge`` against a real worker and a private Redis.

Given-up tasks of ``tests.apps.cli_app`` fill the dead-letter stream; ``cli.sync`` keeps
failing while a Redis key is set, so a test can flip it and replay the task for real.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import select
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
        guard = getattr(app, "_telemetry_guard", None)  # the CLI no longer builds one
        if guard is not None:
            guard.close()


def test_purge_by_task_age_and_id_with_confirmation(fleet: Fleet) -> None:
    """--dry-run and --older-than 7d keep recent entries; no confirmation keeps them; --yes not."""
    _, entry_id = fleet.dead_letter("cli.report", 1)
    dry = fleet.invoke("dead", "purge", "--task", "cli.report", "--dry-run")
    assert dry.exit_code == 0 and entry_id in dry.output and fleet.exists(entry_id)
    old = fleet.invoke("dead", "purge", "--older-than", "7d", "--yes")
    assert old.exit_code == 0 and old.output.strip() == "(none)"
    unconfirmed = fleet.invoke("dead", "purge", entry_id)
    assert unconfirmed.exit_code == 1 and fleet.exists(entry_id)
    index = "{telemetry_guard:dead}:index:cli.report"
    assert fleet.client.zscore(index, entry_id) is not None
    purged = fleet.invoke("dead", "purge", entry_id, "--yes")
    assert purged.exit_code == 0, purged.output
    assert "removed 1 dead letter(s)" in purged.output
    assert not fleet.exists(entry_id)
    assert fleet.client.zscore(index, entry_id) is None  # the task's index stays consistent


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
        guard = getattr(mailer, "_telemetry_guard", None)  # the CLI no longer builds one
        if guard is not None:
            guard.close()
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


# -- replay: at most once, only what the app knows -------------------------------------
def empty_dead_letters(fleet: Fleet) -> None:
    """Start from no dead letters (and no per-task indexes or claims)."""
    fleet.client.delete(DEAD, *fleet.client.keys("{telemetry_guard:dead}:*"))


def synced_accounts(fleet: Fleet) -> list[str]:
    return [json.loads(v)["account"] for v in fleet.client.lrange(DONE_KEY, 0, -1)]


def spawn(fleet: Fleet, *argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([TELEMETRY_GUARD, *argv], cwd=ROOT, env=fleet.env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def wait_for_prompt(proc: subprocess.Popen[bytes], timeout: float = 30) -> bytes:
    """Read stderr until the confirmation question shows (the process has chosen its entries)."""
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while b"dead letter(s)?" not in seen:
        assert time.monotonic() < deadline and proc.poll() is None, seen
        ready, _, _ = select.select([proc.stderr], [], [], 0.1)
        if ready:
            seen += os.read(proc.stderr.fileno(), 4096)
    return seen


def outcomes(stdout: bytes) -> dict[str, str]:
    return {row["id"]: row["outcome"] for row in json_lines(stdout.decode())}


def test_two_replays_that_chose_the_same_entries_send_each_exactly_once(fleet: Fleet) -> None:
    """Both replays selected every entry; each entry runs once, the loser says already replayed."""
    empty_dead_letters(fleet)
    fleet.client.delete(DONE_KEY)
    entries = [fleet.dead_letter("cli.sync", f"acct-twice-{n}")[1] for n in range(12)]
    fleet.client.delete(BROKEN_KEY)
    replays = [spawn(fleet, *APP, "--json", "dead", "replay", "--all") for _ in range(2)]
    for proc in replays:
        wait_for_prompt(proc)  # both have read the stream before either sends
    for proc in replays:
        assert proc.stdin is not None
        proc.stdin.write(b"y\n")
        proc.stdin.flush()
    done = [proc.communicate(timeout=60) for proc in replays]
    assert [proc.returncode for proc in replays] == [0, 0], [err for _, err in done]
    first, second = (outcomes(out) for out, _ in done)
    assert set(first) == set(second) == set(entries)
    for entry_id in entries:
        pair = sorted([first[entry_id], second[entry_id]])
        assert pair[1] == "replayed" and pair[0].startswith("already replayed"), pair
    wait_for(lambda: len(synced_accounts(fleet)) >= len(entries), timeout=20)
    time.sleep(1.0)  # a second copy of any message would run by now
    assert sorted(synced_accounts(fleet)) == sorted(f"acct-twice-{n}" for n in range(12))
    assert not any(fleet.exists(e) for e in entries)
    assert fleet.client.hlen("{telemetry_guard:dead}:claims") == 0
    assert fleet.client.zcard("{telemetry_guard:dead}:index:cli.sync") == 0


def test_two_replay_all_yes_at_once_run_every_dead_letter_once(fleet: Fleet) -> None:
    """`dead replay --all --yes` twice at once: every task runs once; no row is sent twice."""
    empty_dead_letters(fleet)
    fleet.client.delete(DONE_KEY)
    entries = [fleet.dead_letter("cli.sync", f"acct-yes-{n}")[1] for n in range(20)]
    fleet.client.delete(BROKEN_KEY)
    replays = [spawn(fleet, *APP, "--json", "dead", "replay", "--all", "--yes")
               for _ in range(2)]
    done = [proc.communicate(timeout=60) for proc in replays]
    assert [proc.returncode for proc in replays] == [0, 0], [err for _, err in done]
    rows = [outcomes(out) for out, _ in done]
    replayed = [e for r in rows for e, outcome in r.items() if outcome == "replayed"]
    assert sorted(replayed) == sorted(entries)
    assert all(o == "replayed" or o.startswith("already replayed")
               for r in rows for o in r.values())
    wait_for(lambda: len(synced_accounts(fleet)) >= len(entries), timeout=20)
    time.sleep(1.0)
    assert sorted(synced_accounts(fleet)) == sorted(f"acct-yes-{n}" for n in range(20))


def forge(fleet: Fleet, record: dict[str, Any], replay: dict[str, Any]) -> str:
    """An entry written straight into the dead-letter stream (anyone with Redis access can)."""
    return str(fleet.client.xadd(DEAD, {"record": json.dumps(record),
                                        "replay": json.dumps(replay)}).decode())


def test_forged_dead_letters_are_refused_kept_and_say_why(fleet: Fleet) -> None:
    """Celery's built-ins, unregistered tasks and mismatched records: not sent, kept, exit 1."""
    empty_dead_letters(fleet)
    forged = {
        forge(fleet, {"task_name": "celery.backend_cleanup", "task_id": "f1"},
              {"task": "celery.backend_cleanup", "id": "f1", "args": [], "kwargs": {},
               "options": {"queue": "admin-queue"}}):
            "refused: celery.backend_cleanup is a Celery built-in task: never replayed",
        forge(fleet, {"task_name": "cli.drop_tables", "task_id": "f2"},
              {"task": "cli.drop_tables", "id": "f2", "args": [], "kwargs": {},
               "options": {"queue": "admin-queue"}}):
            "refused: task cli.drop_tables is not registered in this app",
        forge(fleet, {"task_name": "cli.report", "task_id": "f3"},
              {"task": "cli.sync", "id": "f3", "args": ["x"], "kwargs": {}}):
            "refused: replay names task cli.sync but the record is of task cli.report",
    }
    done = fleet.run(*APP, "--json", "dead", "replay", "--all", "--yes")
    assert done.returncode == 1, done.stderr
    assert {r["id"]: r["outcome"] for r in json_lines(done.stdout)} == forged
    table = fleet.run(*APP, "dead", "replay", *forged, "--dry-run")
    assert "Celery built-in task" in table.stdout and "not registered" in table.stdout
    assert all(fleet.exists(e) for e in forged)
    time.sleep(0.5)
    assert fleet.client.llen("admin-queue") == 0 and fleet.client.llen("celery") == 0
    empty_dead_letters(fleet)


def test_the_queue_comes_from_the_apps_routing_or_from_queue_never_from_the_stream(
        fleet: Fleet) -> None:
    """A stored `admin-queue` is ignored: task_routes says cli-archive; --queue overrides it."""
    empty_dead_letters(fleet)
    fleet.client.delete("admin-queue", "cli-archive", "cli-manual")
    routed = forge(fleet, {"task_name": "cli.archive", "task_id": "a1"},
                   {"task": "cli.archive", "id": "a1", "args": [1], "kwargs": {},
                    "options": {"queue": "admin-queue"}})
    manual = forge(fleet, {"task_name": "cli.archive", "task_id": "a2"},
                   {"task": "cli.archive", "id": "a2", "args": [2], "kwargs": {},
                    "options": {"queue": "admin-queue"}})
    dry = fleet.run(*APP, "--json", "dead", "replay", routed, "--dry-run")
    assert [r["queue"] for r in json_lines(dry.stdout)] == ["cli-archive"]
    first = fleet.run(*APP, "--json", "dead", "replay", routed, "--yes")
    second = fleet.run(*APP, "--json", "dead", "replay", manual, "--queue", "cli-manual",
                       "--yes")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert [(r["queue"], r["outcome"]) for r in json_lines(first.stdout)] == [
        ("cli-archive", "replayed")]
    assert [(r["queue"], r["outcome"]) for r in json_lines(second.stdout)] == [
        ("cli-manual", "replayed")]
    assert fleet.client.llen("cli-archive") == 1 and fleet.client.llen("cli-manual") == 1
    assert fleet.client.llen("admin-queue") == 0
    assert [json.loads(m)["headers"]["task"] for m in fleet.client.lrange("cli-archive", 0, -1)
            ] == ["cli.archive"]
    fleet.client.delete("cli-archive", "cli-manual")


# -- hostile records: entry ids win, unreadable rows, no raw control characters ---------
DEEP = b"[" * 50_000 + b"]" * 50_000
HOSTILE = "\x1b[2J\x1b]52;c;ZXZpbA==\x07\rforged\u202eevil\x9b31m"


def test_a_records_own_id_never_overwrites_the_entry_id_in_json_rows(fleet: Fleet) -> None:
    """`dead list --json` and `errors list --json`: `id` is the entry's; the record's is kept."""
    empty_dead_letters(fleet)
    dead_id = forge(fleet, {"task_name": "cli.report", "task_id": "j1", "id": "forged"},
                    {"task": "cli.report", "id": "j1", "args": [1], "kwargs": {}})
    error_id = fleet.client.xadd(ERRORS, {"record": json.dumps(
        {"task_name": "cli.report", "id": "forged", "time": "never"})}).decode()
    dead_rows = json_lines(fleet.run(*APP, "--json", "dead", "list").stdout)
    error_rows = json_lines(fleet.run(*APP, "errors", "list", "--json", "--limit", "5").stdout)
    assert [(r["id"], r["record_id"]) for r in dead_rows] == [(dead_id, "forged")]
    [row] = [r for r in error_rows if r.get("record_id") == "forged"]
    assert row["id"] == error_id and row["record_time"] == "never"
    shown = json_lines(fleet.run(*APP, "dead", "show", dead_id, "--json").stdout)
    assert shown[0]["id"] == dead_id
    fleet.client.xdel(ERRORS, error_id)
    empty_dead_letters(fleet)


def test_a_record_nested_fifty_thousand_deep_is_listed_as_unreadable_and_the_rest_print(
        fleet: Fleet) -> None:
    """errors list/show/tail and dead list/show: the deep record is one unreadable row."""
    empty_dead_letters(fleet)
    since = dt.datetime.fromtimestamp(time.time() - 0.5, dt.timezone.utc).isoformat()
    good = fleet.client.xadd(ERRORS, {"record": json.dumps(
        {"task_name": "cli.report", "message": "the readable one", "severity": "high"})})
    deep = fleet.client.xadd(ERRORS, {"record": DEEP}).decode()
    deep_object = fleet.client.xadd(ERRORS, {"record": b'{"a": ' + DEEP + b"}"}).decode()
    try:
        dead_deep = fleet.client.xadd(DEAD, {"record": DEEP, "replay": DEEP}).decode()
        dead_good = forge(fleet, {"task_name": "cli.report", "message": "readable dead"},
                          {"task": "cli.report", "args": [1], "kwargs": {}})
        runs = {
            "errors list": fleet.run(*APP, "errors", "list", "--since", since),
            "errors list --json": fleet.run(*APP, "errors", "list", "--since", since,
                                            "--json"),
            "errors show": fleet.run(*APP, "errors", "show", deep),
            "errors tail": fleet.run(*APP, "errors", "tail", "--since", since, "--count", "3",
                                     "--timeout", "5"),
            "dead list": fleet.run(*APP, "dead", "list"),
            "dead list --json": fleet.run(*APP, "dead", "list", "--json"),
            "dead show": fleet.run(*APP, "dead", "show", dead_deep),
        }
        for name, done in runs.items():
            assert done.returncode == 0, (name, done.stderr)
            assert "Traceback" not in done.stderr and "RecursionError" not in done.stderr
            assert "unreadable record (nested too deep)" in done.stdout, (name, done.stdout)
        for name in ("errors list", "errors list --json", "errors tail"):
            assert "the readable one" in runs[name].stdout, name
        assert "readable dead" in runs["dead list --json"].stdout
        assert dead_good in runs["dead list"].stdout and dead_deep in runs["dead list"].stdout
        rows = {r["id"]: r for r in json_lines(runs["errors list --json"].stdout)}
        assert rows[deep]["unreadable"] == rows[deep_object]["unreadable"]
    finally:
        fleet.client.xdel(ERRORS, good, deep, deep_object)
        empty_dead_letters(fleet)


def test_escape_sequences_in_exception_text_never_reach_the_terminal_raw(fleet: Fleet) -> None:
    """Clear screen, OSC 52, \\r, C1 and bidi controls are shown escaped; --json escapes them."""
    empty_dead_letters(fleet)
    _, entry_id = fleet.dead_letter("cli.charge", HOSTILE, "declined")
    [error_id] = [e.decode() for e, f in fleet.client.xrange(ERRORS)
                  if json.loads(f[b"record"]).get("task_id") == json.loads(
                      fleet.client.xrange(DEAD, entry_id, entry_id)[0][1][b"record"])["task_id"]]
    record = json.loads(fleet.client.xrange(ERRORS, error_id, error_id)[0][1][b"record"])
    assert "\x1b[2J" in record["message"]  # stored as the task raised it
    argvs = [
        ("errors", "list", "--since", "5m"), ("errors", "list", "--since", "5m", "--json"),
        ("errors", "show", error_id), ("errors", "show", error_id, "--json"),
        ("errors", "tail", "--since", "5m", "--count", "50", "--timeout", "3"),
        ("errors", "tail", "--since", "5m", "--count", "50", "--timeout", "3", "--json"),
        ("dead", "list"), ("dead", "list", "--json"), ("dead", "show", entry_id),
        ("dead", "show", entry_id, "--json"), ("dead", "show", entry_id, "--show-args"),
        ("dead", "replay", entry_id, "--dry-run"), ("dead", "replay", entry_id, "--yes"),
    ]
    for argv in argvs:
        done = subprocess.run([TELEMETRY_GUARD, *APP, *argv], cwd=ROOT, env=fleet.env,
                              capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        output = done.stdout + done.stderr
        for raw in (b"\x1b", b"\x07", b"\r", "\x9b".encode(), "\u202e".encode()):
            assert raw not in output, (argv, raw, output[:400])
        if argv[:2] in (("errors", "list"), ("errors", "show"), ("errors", "tail"),
                        ("dead", "show")) and "--json" not in argv:  # the message is shown
            assert b"\\x1b[2J" in done.stdout, (argv, done.stdout[:400])
    empty_dead_letters(fleet)


def test_a_replay_the_broker_refuses_releases_its_claim_and_a_later_replay_sends_it(
        fleet: Fleet) -> None:
    """The broker refuses the message (an ACL user may not LPUSH): `not sent`, the claim is
    released and the entry stays; a later replay through the broker sends it once."""
    task_id, entry_id = fleet.dead_letter("cli.sync", "acct-broker-refuses")
    fleet.client.delete(BROKEN_KEY)
    fleet.client.execute_command("ACL", "SETUSER", "no-publish", "on", ">no-publish-pw", "~*",
                                 "&*", "+@all", "-lpush", "-rpush")
    host_port = fleet.url.split("://", 1)[1]
    refusing = dict(fleet.env, TG_TEST_BROKER=f"redis://no-publish:no-publish-pw@{host_port}",
                    TELEMETRY_GUARD_REDIS_URL=fleet.url)
    try:
        refused = subprocess.run(
            [TELEMETRY_GUARD, *APP, "dead", "replay", entry_id, "--yes", "--json"], cwd=ROOT,
            env=refusing, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        fleet.client.execute_command("ACL", "DELUSER", "no-publish")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    [row] = json_lines(refused.stdout)
    assert row["id"] == entry_id and row["outcome"].startswith("not sent: "), row
    assert fleet.exists(entry_id)
    assert not fleet.client.hexists("{telemetry_guard:dead}:claims", entry_id)

    replayed = fleet.run(*APP, "dead", "replay", entry_id, "--yes", "--json")
    assert replayed.returncode == 0, replayed.stderr
    [row] = json_lines(replayed.stdout)
    assert row["outcome"] == "replayed" and not fleet.exists(entry_id)
    done = wait_for(lambda: [json.loads(d) for d in fleet.client.lrange(DONE_KEY, 0, -1)
                             if json.loads(d)["account"] == "acct-broker-refuses"], timeout=15)
    assert len(done) == 1 and done[0]["replay_of"] == task_id
