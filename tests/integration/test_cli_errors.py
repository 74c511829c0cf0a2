"""``errors list|show|tail|stats`` as a user runs them, against a real worker and a private Redis.

A ``celery worker`` subprocess runs ``tests.apps.cli_app``, whose tasks fail with known
severities; the CLI then runs as the installed console script, as ``celery ... guard``
and in-process (click's CliRunner, the app handed over as ``celery`` hands it).
"""

from __future__ import annotations

import json
import os
import random
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
from telemetry_guard.cli.stream_query import (
    Entry,
    FailureCounts,
    RecordFilter,
    Window,
    severities_from,
)
from telemetry_guard.cli.streams import GuardStreams
from tests.apps.cli_app import BROKEN_KEY
from tests.servers import RedisServer, free_port, start_redis, wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TELEMETRY_GUARD = str(BIN / "telemetry-guard")
CELERY = str(BIN / "celery")
ERRORS = "telemetry_guard:errors"
APP = ["-A", "tests.apps.cli_app"]


@dataclass
class Workload:
    """The private Redis after a worker ran the failing workload, and the ids it produced."""

    url: str
    env: dict[str, str]
    client: redis.Redis
    app: Celery
    ids: dict[str, list[str]]

    def run(self, *argv: str, program: str = TELEMETRY_GUARD,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """The CLI as a user runs it: a subprocess of the installed script."""
        return subprocess.run([program, *argv], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def invoke(self, *argv: str, app: Celery | None = None) -> Result:
        """The CLI in-process, handed the app the way ``celery -A proj guard`` hands it."""
        return CliRunner().invoke(celery_guard, list(argv),
                                  obj=SimpleNamespace(app=app or self.app))

    def send(self, task: str, *args: Any, **kwargs: Any) -> str:
        return str(self.app.send_task(task, args, kwargs, queue="cli").id)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``celery -A tests.apps.cli_app worker -P solo`` on the test's private Redis."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [CELERY, *APP, "worker", "-P", "solo", "-Q", "cli", "-l", "WARNING",
             "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def workload(server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workload]:
    """Eleven failures of four tasks (LOW and HIGH), written by a real worker."""
    url = f"{server.url}/0"
    env = dict(os.environ, TG_TEST_BROKER=url, PYTHONPATH=str(ROOT))
    app = Celery("cli-tests", broker=url, set_as_current=False)
    app.conf.update(task_default_queue="cli", telemetry_guard_tracing=False)
    client = server.client(0)
    client.set(BROKEN_KEY, 1)
    load = Workload(url, env, client, app, {})
    ids = load.ids
    ids["declined"] = [load.send("cli.charge", i, "declined") for i in range(4)]
    ids["ledger"] = [load.send("cli.charge", i, "ledger") for i in range(3)]
    ids["report"] = [load.send("cli.report", i) for i in range(2)]
    ids["cleanup"] = [load.send("cli.cleanup", i) for i in range(1)]
    ids["sync"] = [load.send("cli.sync", "acct-1", password="hunter2")]
    worker = start_worker(env, tmp_path_factory.mktemp("cli-errors") / "worker.log")
    try:
        wait_for(lambda: client.xlen(ERRORS) >= 11, timeout=40)
        yield load
    finally:
        stop(worker)
        guard = getattr(app, "_telemetry_guard", None)
        if guard is not None:
            guard.close()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def one_line_error(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    assert "Traceback" not in text
    return lines[0]


# -- list ------------------------------------------------------------------------------
def test_list_by_task_and_min_severity_returns_exactly_the_high_records(
        workload: Workload) -> None:
    """`errors list --task t --min-severity high --since 5m --json` as the console script."""
    done = workload.run(*APP, "errors", "list", "--task", "cli.charge", "--min-severity",
                        "high", "--since", "5m", "--json")
    assert done.returncode == 0, done.stderr
    records = json_lines(done.stdout)
    assert sorted(r["task_id"] for r in records) == sorted(workload.ids["ledger"])
    assert {(r["task_name"], r["severity"], r["exception_type"]) for r in records} == {
        ("cli.charge", "high", "LedgerCorrupt")}
    ids = [tuple(map(int, r["id"].split("-"))) for r in records]
    assert ids == sorted(ids, reverse=True)  # newest first


def test_celery_guard_subcommand_with_group_json_gives_the_same_records(
        workload: Workload) -> None:
    """`celery -A app guard --json errors list ...` answers like the console script."""
    done = workload.run(*APP, "guard", "--json", "errors", "list", "--task", "cli.charge",
                        "--min-severity", "high", "--since", "5m", program=CELERY)
    assert done.returncode == 0, done.stderr
    assert sorted(r["task_id"] for r in json_lines(done.stdout)) == sorted(
        workload.ids["ledger"])


def test_list_prints_a_table_newest_first_up_to_the_limit(workload: Workload) -> None:
    """Without --json: a header and one row per record, cut at --limit."""
    result = workload.invoke("errors", "list", "--limit", "3")
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split() == ["ID", "TIME", "TASK", "SEVERITY", "EXCEPTION", "DECISION",
                              "MESSAGE"]
    assert len(rows) == 3
    assert "cli.sync" in rows[0] and "give_up" in rows[0]


@pytest.mark.parametrize(("argv", "kind"), [
    (["--task", "cli.cleanup", "--severity", "low"], "cleanup"),
    (["--task", "cli.*", "--severity", "high", "--exception", "ValueError"], "report"),
    (["--exception", "LedgerCorrupt"], "ledger"),
    (["--exception", "tests.apps.cli_app.CardDeclined"], "declined"),
    (["--grep", "CARD DECLINED", "--since", "10m"], "declined"),
    (["--task", "cli.charge", "--severity", "low", "--min-severity", "low"], "declined"),
    (["--min-severity", "critical"], None),
    (["--until", "2000-01-01T00:00:00Z"], None),
])
def test_filters_select_exactly_the_matching_records(
        workload: Workload, argv: list[str], kind: str | None) -> None:
    """Task (and globs), exact and minimum severity, exception, grep and time bounds."""
    result = workload.invoke("--json", "errors", "list", *argv)
    assert result.exit_code == 0, result.output
    expected = workload.ids[kind] if kind else []
    assert sorted(r["task_id"] for r in json_lines(result.stdout)) == sorted(expected)


def test_records_keep_secrets_redacted(workload: Workload) -> None:
    """The error log only ever holds redacted arguments, and the CLI prints them as stored."""
    result = workload.invoke("errors", "list", "--task", "cli.sync", "--json")
    [record] = json_lines(result.stdout)
    assert record["kwargs"] == {"password": "[REDACTED]"}
    assert "hunter2" not in result.output


# -- show ------------------------------------------------------------------------------
def test_show_prints_one_record_whole(workload: Workload) -> None:
    """`errors show ID` gives the stored record with its id and time; the table shows lines."""
    [listed] = json_lines(workload.invoke("errors", "list", "--task", "cli.report",
                                          "--limit", "1", "--json").output)
    result = workload.invoke("errors", "show", listed["id"], "--json")
    assert result.exit_code == 0, result.output
    [shown] = json_lines(result.stdout)
    [(_, fields)] = workload.client.xrange(ERRORS, listed["id"], listed["id"])
    assert shown == {"id": listed["id"], "time": listed["time"],
                     **json.loads(fields[b"record"])}
    table = workload.invoke("errors", "show", listed["id"]).output
    assert "traceback:" in table and "ValueError: report" in table


def test_unknown_id_is_a_one_line_usage_error(workload: Workload) -> None:
    """An id that is not in the log: exit 2 and one line, as a subprocess and in-process."""
    done = workload.run(*APP, "errors", "show", "1-0")
    assert done.returncode == 2
    assert "no error-log entry with id 1-0" in one_line_error(done.stderr)
    result = workload.invoke("errors", "show", "1-0")
    assert result.exit_code == 2
    assert "no error-log entry" in one_line_error(result.output)


def test_malformed_since_and_missing_app_are_one_line_errors_as_a_user(
        workload: Workload) -> None:
    """A bad --since and an app module that does not exist: exit 2, one line, no traceback."""
    done = workload.run(*APP, "errors", "list", "--since", "yesterday")
    assert done.returncode == 2
    assert "not a time: 'yesterday'" in one_line_error(done.stderr)
    done = workload.run("-A", "tg_no_such_app", "errors", "list")
    assert done.returncode == 2
    assert "cannot import app module" in one_line_error(done.stderr)


def test_unreachable_redis_is_a_one_line_error_exit_1(workload: Workload) -> None:
    """Redis down is a problem found (exit 1), said in one line with the URL masked."""
    app = Celery("down", broker=f"redis://:pw-secret@127.0.0.1:{free_port()}/0",
                 set_as_current=False)
    app.conf.telemetry_guard_tracing = False
    try:
        result = workload.invoke("errors", "list", app=app)
        assert result.exit_code == 1
        line = one_line_error(result.output)
        assert "cannot reach Redis" in line and "pw-secret" not in line
    finally:
        guard = getattr(app, "_telemetry_guard", None)  # the CLI no longer builds one
        if guard is not None:
            guard.close()


# -- stats -----------------------------------------------------------------------------
def test_stats_count_by_task_exception_and_severity(workload: Workload) -> None:
    """Counts over the window, most frequent first."""
    result = workload.invoke("errors", "stats", "--since", "10m", "--json")
    assert result.exit_code == 0, result.output
    rows = json_lines(result.stdout)
    counts = {(r["task"], r["exception"], r["severity"]): r["count"] for r in rows}
    assert counts == {("cli.charge", "CardDeclined", "low"): 4,
                      ("cli.charge", "LedgerCorrupt", "high"): 3,
                      ("cli.report", "ValueError", "high"): 2,
                      ("cli.cleanup", "ValueError", "low"): 1,
                      ("cli.sync", "ConnectionRefusedError", "high"): 1}
    assert [r["count"] for r in rows] == sorted(counts.values(), reverse=True)


# -- tail ------------------------------------------------------------------------------
def test_tail_from_since_stops_after_count(workload: Workload) -> None:
    """`errors tail --since 5m --count 3` prints the first three matching records, oldest first."""
    done = workload.run(*APP, "errors", "tail", "--since", "5m", "--task", "cli.charge",
                        "--count", "3", "--json", "--timeout", "20")
    assert done.returncode == 0, done.stderr
    records = json_lines(done.stdout)
    assert len(records) == 3
    assert [r["task_id"] for r in records] == workload.ids["declined"][:3]


def blocked_readers(client: redis.Redis) -> int:
    return sum(1 for c in client.client_list() if c.get("cmd") == "xread")


def test_tail_follows_new_records_live_and_ctrl_c_exits_0(workload: Workload) -> None:
    """A record written after tail started is printed; Ctrl-C ends tail with exit 0."""
    argv = [TELEMETRY_GUARD, *APP, "errors", "tail", "--task", "cli.report", "--json"]
    tail = subprocess.Popen([*argv, "--count", "1", "--timeout", "30"], cwd=ROOT,
                            env=workload.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    idle = subprocess.Popen(argv, cwd=ROOT, env=workload.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: blocked_readers(workload.client) >= 2, timeout=20)
        task_id = workload.send("cli.report", 99)
        out, err = tail.communicate(timeout=30)
        assert tail.returncode == 0, err
        [record] = json_lines(out)
        assert (record["task_id"], record["args"]) == (task_id, [99])
        idle.send_signal(signal.SIGINT)
        out, err = idle.communicate(timeout=10)
        assert idle.returncode == 0, err
        assert [r["task_id"] for r in json_lines(out)] == [task_id]
        assert "Traceback" not in err
    finally:
        for proc in (tail, idle):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    workload.ids["report"].append(task_id)  # later tests count it


# -- the scan itself -------------------------------------------------------------------
WORDS = ["alpha", "Beta", "gamma", "İstanbul", "KELVIN \u212a", 'quote"d', "back\\slash"]


def test_paged_scans_agree_with_a_brute_force_filter_inside_and_outside_redis(
        server: RedisServer) -> None:
    """Page edges, limits, windows and pre-checks (in Redis and in Python) change no answer."""
    client = server.client(1)
    client.flushdb()
    rng = random.Random(3)
    base = int(time.time() * 1000) - 2_500_000
    pipe = client.pipeline(transaction=False)
    records = []
    for i in range(2500):
        record = {"task_name": rng.choice(["a.one", "a.two", "b.three", "b.İ", 'q"uote']),
                  "severity": rng.choice(["low", "medium", "high", "critical"]),
                  "exception_type": rng.choice(["ValueError", "KeyError", "Oops"]),
                  "exception_module": "builtins",
                  "message": " ".join(rng.sample(WORDS, 2)), "timestamp": base / 1000 + i}
        if i % 97 == 0:  # another writer's field order
            record = {"severity": record.pop("severity"), **record}
        entry_id = f"{base + i * 1000 // 3}-{i % 3}"
        records.append((entry_id, record))
        pipe.xadd("t:errors", {"record": json.dumps(record)}, id=entry_id)
    pipe.execute()
    streams = GuardStreams(f"{server.url}/1", "t:")
    mid = (base + 1_000_000) / 1000
    cases = [
        (RecordFilter(), Window(), 50),
        (RecordFilter(), Window(), None),
        (RecordFilter(tasks=("a.two",), severities=severities_from(min_severity="high")),
         Window(since=mid), 50),
        (RecordFilter(tasks=("a.two",), severities=severities_from(min_severity="high")),
         Window(since=mid, until=mid + 300), None),
        (RecordFilter(tasks=("b.*",), exceptions=("KeyError",)), Window(), 400),
        (RecordFilter(grep="istanbul"), Window(), None),
        (RecordFilter(grep="kelvin k"), Window(), None),
        (RecordFilter(grep='quote"d'), Window(until=mid), 7),
        (RecordFilter(tasks=("b.İ",)), Window(), 1001),
    ]
    for flt, window, limit in cases:
        low = -1 if window.since is None else int(window.since * 1000)
        high = float("inf") if window.until is None else int(window.until * 1000)
        expected = [i for i, r in reversed(records)
                    if low <= int(i.split("-")[0]) <= high and flt.matches(r)][:limit]
        for use_script in (True, False):
            streams._use_script = use_script
            got = [e.id for e in streams.scan("t:errors", window, flt, limit=limit)]
            assert got == expected, (flt, window, limit, use_script)
        oldest = [e.id for e in streams.scan("t:errors", window, flt, limit=limit,
                                             newest_first=False)]
        assert oldest == [i for i, r in records
                          if low <= int(i.split("-")[0]) <= high and flt.matches(r)][:limit]
        if limit is None:
            counted = [FailureCounts(), FailureCounts()]
            for i, r in records:
                if i in expected:
                    counted[0].add_entry(Entry(i, json.dumps(r).encode()))
            for use_script in (True, False):
                streams._use_script = use_script
                counted[1] = streams.count("t:errors", window, flt)
                assert counted[1].rows() == counted[0].rows(), (flt, window, use_script)
    client.flushdb()
