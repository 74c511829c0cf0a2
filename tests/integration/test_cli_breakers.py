"""``telemetry-guard breakers``: run like a user, against a private Redis and a real worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
import structlog
from celery import Celery
from click.testing import CliRunner

from telemetry_guard import CircuitBreaker
from telemetry_guard.breaker import RedisBreakerStore
from telemetry_guard.breaker import breaker as registry
from telemetry_guard.breaker.state import BreakerConfig
from telemetry_guard.cli import celery_guard, main
from tests.servers import free_port, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "telemetry-guard")
APP = "tests.apps.cli_breaker_app"
QUEUE = "cli_breaker"
#: The counter ``cli.charge`` increments (tests.apps.cli_breaker_app.RUNS_KEY; that module
#: is never imported here: importing it would wire its guard into this test process).
RUNS_KEY = "cli-test:charge-runs"
#: A worker re-reads a breaker it saw open at least this often (RedisBreakerStore).
REFRESH_INTERVAL = 1.0


def cli_env(broker: str, **extra: str) -> dict[str, str]:
    """The environment of the app module: its broker, and any TELEMETRY_GUARD_* settings."""
    env = dict(os.environ, TG_TEST_BROKER=broker, PYTHONPATH=str(ROOT))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``telemetry-guard -A tests.apps.cli_breaker_app ARGS`` as a user types it."""
    return subprocess.run([CLI, "-A", APP, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class CliWorker:
    """``celery -A tests.apps.cli_breaker_app worker -P solo`` in a subprocess."""

    def __init__(self, env: dict[str, str], queues: str, tmp: Path, name: str) -> None:
        self.nodename = f"{name}@localhost"
        self.log_path = tmp / f"{name}.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", APP, "worker", "-P", "solo", "-Q", queues,
             "-n", self.nodename, "-l", "WARNING", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, app: Celery) -> None:
        """Until the worker answers a ping (no task runs, so it has no view of any breaker)."""
        def answered() -> bool:
            assert self.proc.poll() is None, self.log_path.read_text()
            return bool(app.control.ping(destination=[self.nodename], timeout=0.3))

        wait_for(answered, timeout=30, interval=0.1)

    def stop(self) -> None:
        stop_process(self.proc, 15)
        self.log.close()


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    app = Celery("cli-producer", broker=redis_url, backend=redis_url, set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def worker(redis_url: str, producer: Celery, tmp_path: Path) -> Iterator[CliWorker]:
    started = CliWorker(cli_env(redis_url), QUEUE, tmp_path, "cli-breaker")
    try:
        started.wait_ready(producer)
        yield started
    finally:
        started.stop()


def charge(producer: Celery, order: str) -> str:
    result: str = producer.send_task("cli.charge", args=(order,), queue=QUEUE).get(timeout=20)
    return result


def runs(redis_url: str) -> int:
    return int(redis.Redis.from_url(redis_url).get(RUNS_KEY) or 0)


def listed(env: dict[str, str], name: str) -> dict[str, Any]:
    done = run_cli(env, "breakers", "list", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["breaker"]: row for row in json_lines(done.stdout)}
    return rows[name]


def test_open_makes_the_workers_next_call_fall_back_and_reset_lets_it_run(
        redis_url: str, producer: Celery, worker: CliWorker) -> None:
    """`breakers open` → the worker's next task returns the fallback without running; `reset` →
    it runs again; `list --json` and `show` report the shared state and retry_after."""
    env = cli_env(redis_url)
    assert listed(env, "cli.payments")["state"] == "closed"

    opened = run_cli(env, "breakers", "open", "cli.payments")
    assert opened.returncode == 0, opened.stderr
    assert "open" in opened.stdout.split()
    told = [e for e in json_lines(opened.stderr) if e.get("event") == "breaker.state_changed"]
    assert [(e["from_state"], e["to_state"], e["reason"]) for e in told] == [
        ("closed", "open", "forced")]

    row = listed(env, "cli.payments")
    assert (row["state"], row["mode"], row["source"]) == ("open", "normal", "app")
    assert 250 < row["retry_after"] <= 300
    shown = run_cli(env, "breakers", "show", "cli.payments")
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(None, 1) for line in shown.stdout.splitlines())
    assert fields["state"] == "open"
    assert 250 < float(fields["retry_after"]) <= 300

    assert charge(producer, "o-1") == "fallback:o-1"
    rejected_at = time.monotonic()
    assert runs(redis_url) == 0

    reset = run_cli(env, "breakers", "reset", "cli.payments")
    assert reset.returncode == 0, reset.stderr
    assert listed(env, "cli.payments")["state"] == "closed"
    time.sleep(max(0.0, rejected_at + REFRESH_INTERVAL + 0.1 - time.monotonic()))
    assert charge(producer, "o-2") == "charged:o-2"
    assert runs(redis_url) == 1


def test_open_makes_the_next_call_fall_back_in_a_worker_that_saw_the_breaker_closed(
        redis_url: str, producer: Celery, worker: CliWorker) -> None:
    """A warm worker (its last call succeeded) falls back from its very next call after open."""
    env = cli_env(redis_url)
    assert charge(producer, "warm") == "charged:warm"
    try:
        assert run_cli(env, "breakers", "open", "cli.payments").returncode == 0
        assert charge(producer, "o-1") == "fallback:o-1"
        assert runs(redis_url) == 1
    finally:
        run_cli(env, "breakers", "reset", "cli.payments")


def test_open_hold_stays_open_until_close_lifts_the_forced_mode(redis_url: str) -> None:
    """`open --hold` sets mode forced_open; `reset` keeps the mode; `close` clears it."""
    env = cli_env(redis_url)
    held = run_cli(env, "breakers", "open", "--hold", "cli.payments", "--json")
    assert held.returncode == 0, held.stderr
    [row] = json_lines(held.stdout)
    assert (row["action"], row["state"], row["mode"]) == ("hold_open", "open", "forced_open")

    reset = run_cli(env, "--json", "breakers", "reset", "cli.payments")
    [row] = json_lines(reset.stdout)
    assert (row["state"], row["mode"]) == ("closed", "forced_open")

    closed = run_cli(env, "breakers", "--json", "close", "cli.payments")
    [row] = json_lines(closed.stdout)
    assert (row["state"], row["mode"]) == ("closed", "normal")


def test_a_garbled_breaker_is_shown_invalid_its_task_still_runs_and_reset_repairs_it(
        redis_url: str, producer: Celery, worker: CliWorker) -> None:
    """Garbage in the hash: the task runs (not its fallback), the worker says so once, `list`
    and `show` print `invalid` with the raw fields (escaped) and exit 1, `reset` repairs."""
    env = cli_env(redis_url)
    client = redis.Redis.from_url(redis_url)
    client.hset("telemetry_guard:breaker:{cli.payments}",
                mapping={"state": "open", "opened_at": "1e300", "mode": "x\x1b[2J"})
    client.hset("telemetry_guard:breaker:{cli.garbled}", mapping={"state": "bogus", "fails": "nan"})
    assert charge(producer, "g-1") == "charged:g-1"
    assert charge(producer, "g-2") == "charged:g-2"
    assert runs(redis_url) == 2

    done = run_cli(env, "breakers", "list", "--json")
    assert done.returncode == 1, done.stderr
    rows = {row["breaker"]: row for row in json_lines(done.stdout)}
    payments, garbled = rows["cli.payments"], rows["cli.garbled"]
    assert (payments["state"], payments["invalid_fields"]) == ("invalid", ["mode", "opened_at"])
    assert payments["raw"] == {"mode": "x\\x1b[2J", "opened_at": "1e300", "state": "open"}
    assert (garbled["state"], garbled["invalid_fields"]) == ("invalid", ["state", "fails"])
    assert "`breakers reset cli.payments` repairs it" in done.stderr
    table = run_cli(env, "breakers", "list")
    assert table.returncode == 1 and "\x1b" not in table.stdout
    assert {line.split()[0]: line.split()[1] for line in table.stdout.splitlines()[1:]} == {
        "cli.garbled": "invalid", "cli.payments": "invalid"}
    shown = run_cli(env, "breakers", "show", "cli.garbled")
    assert shown.returncode == 1 and "invalid" in shown.stdout.split()

    for name in ("cli.payments", "cli.garbled"):
        reset = run_cli(env, "breakers", "reset", name, "--json")
        assert reset.returncode == 0, reset.stderr
        [row] = json_lines(reset.stdout)
        assert (row["from_state"], row["state"], row["mode"]) == ("invalid", "closed", "normal")
    repaired = run_cli(env, "breakers", "list", "--json")
    assert repaired.returncode == 0, repaired.stderr
    assert {row["breaker"]: row["state"] for row in json_lines(repaired.stdout)} == {
        "cli.garbled": "closed", "cli.payments": "closed"}
    worker_log = worker.log_path.read_text()
    assert worker_log.count("breaker.store_invalid") == 1, worker_log


def test_unknown_breaker_and_missing_app_module_are_one_line_usage_errors(
        redis_url: str) -> None:
    """Exit code 2 and one line on stderr, never a traceback."""
    env = cli_env(redis_url)
    for args in (("breakers", "show", "no.such"), ("breakers", "open", "no.such"),
                 ("breakers", "close", "no.such"), ("breakers", "reset", "no.such")):
        done = run_cli(env, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.strip().splitlines() == [
            "Error: unknown breaker 'no.such': not defined by the app and not in Redis "
            "(try `breakers list`)"], args
        assert done.stdout == ""

    missing = subprocess.run([CLI, "-A", "tests.apps.no_such_app", "breakers", "list"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "no_such_app" in missing.stderr and "Traceback" not in missing.stderr

    unset = dict(env)
    del unset["TG_TEST_BROKER"]
    broken = run_cli(unset, "breakers", "list")
    assert broken.returncode == 2
    assert broken.stderr.strip().splitlines() == [
        f"Error: app module {APP!r} failed to import: KeyError: 'TG_TEST_BROKER'"]


# -- in process (CliRunner), through `celery -A app guard` ---------------------------------


@pytest.fixture
def runner() -> Iterator[CliRunner]:
    """A CliRunner with this test's breakers only; structlog and the registry restored after.

    The breaker registry is per process: in a test session it holds every earlier test's
    breakers (some on Redis servers that are gone), which a real CLI process never sees.
    """
    configured = structlog.is_configured()
    saved = dict(registry._breakers)
    registry._breakers.clear()
    try:
        yield CliRunner()
    finally:
        registry._breakers.clear()
        registry._breakers.update(saved)
        if not configured:
            structlog.reset_defaults()


def invoke(runner: CliRunner, app: Celery, *args: str) -> Any:
    return runner.invoke(celery_guard, list(args), obj=SimpleNamespace(app=app))


def test_list_shows_breakers_found_only_in_redis_and_skips_their_side_keys(
        runner: CliRunner, celery_app: Celery, redis_url: str) -> None:
    """A breaker another process made is listed from its Redis hash; :permits/:window are not."""
    CircuitBreaker("cli.local", reset_timeout=30.0)
    remote = RedisBreakerStore("cli.remote", BreakerConfig(reset_timeout=5.0),
                               redis_url=redis_url)
    remote.force_open()
    client = redis.Redis.from_url(redis_url)
    client.zadd("telemetry_guard:breaker:{cli.remote}:permits", {"1:1": 1})
    client.setbit("telemetry_guard:breaker:{cli.remote}:window", 0, 1)

    for args in (("--json", "breakers", "list"), ("breakers", "--json", "list"),
                 ("breakers", "list", "--json"), ("breakers", "--json")):
        done = invoke(runner, celery_app, *args)
        assert done.exit_code == 0, done.output
        rows = {row["breaker"]: row for row in json_lines(done.stdout)}
        assert not any(name.endswith((":permits", ":window")) for name in rows), args
        assert (rows["cli.remote"]["state"], rows["cli.remote"]["source"]) == ("open", "redis")
        assert rows["cli.remote"]["retry_after"] is None  # its reset_timeout is not known here
        assert (rows["cli.local"]["state"], rows["cli.local"]["source"]) == ("closed", "app")

    table = invoke(runner, celery_app, "breakers", "list")
    assert table.exit_code == 0
    assert table.stdout.splitlines()[0].split()[:3] == ["BREAKER", "STATE", "MODE"]

    closed = invoke(runner, celery_app, "breakers", "close", "cli.remote", "--json")
    assert closed.exit_code == 0, closed.output
    assert client.hget("telemetry_guard:breaker:{cli.remote}", "state") == b"closed"


def test_breaker_commands_go_through_the_guards_transition_listener(
        runner: CliRunner, celery_app: Celery) -> None:
    """`open` and `close` are told like any transition: the guard's listener sees both."""
    from telemetry_guard.core.events import BreakerChange
    from telemetry_guard.testing import capture_events

    CircuitBreaker("cli.told", reset_timeout=30.0)
    with capture_events() as events:
        assert invoke(runner, celery_app, "breakers", "open", "cli.told").exit_code == 0
        assert invoke(runner, celery_app, "breakers", "close", "cli.told").exit_code == 0
    changes = [(e.breaker, e.from_state, e.to_state) for e in events
               if isinstance(e, BreakerChange)]
    assert changes == [("cli.told", "closed", "open"), ("cli.told", "open", "closed")]


def test_a_breaker_on_an_unreachable_redis_is_listed_with_its_error_and_exit_code_1(
        runner: CliRunner, celery_app: Celery) -> None:
    """One breaker's own Redis is down: the others are still listed; exit 1, one stderr line."""
    CircuitBreaker("cli.fine")
    elsewhere = f"redis://:pw-elsewhere@127.0.0.1:{free_port()}/0"
    CircuitBreaker("cli.elsewhere", redis_url=elsewhere)
    done = invoke(runner, celery_app, "breakers", "list", "--json")
    assert done.exit_code == 1
    rows = {row["breaker"]: row for row in json_lines(done.stdout)}
    assert rows["cli.fine"]["state"] == "closed"
    assert rows["cli.elsewhere"]["state"] is None
    assert "cannot reach Redis at redis://***@127.0.0.1" in rows["cli.elsewhere"]["error"]
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("Error: breaker 'cli.elsewhere': cannot reach Redis")
    assert "pw-elsewhere" not in done.output

    shown = invoke(runner, celery_app, "breakers", "open", "cli.elsewhere")
    assert shown.exit_code == 1
    assert shown.stderr.strip().splitlines() == [f"Error: {rows['cli.elsewhere']['error']}"]


def test_main_without_an_app_is_a_usage_error(runner: CliRunner) -> None:
    """No -A and no TELEMETRY_GUARD_APP: exit 2 with one line."""
    done = runner.invoke(main, ["breakers", "list"], env={"TELEMETRY_GUARD_APP": None})
    assert done.exit_code == 2
    assert done.stderr.strip().splitlines() == [
        "Error: no app given: use -A/--app MODULE (or TELEMETRY_GUARD_APP)"]


def test_migrate_keys_moves_breakers_from_the_old_layout_keeping_state_and_expiry(
        runner: CliRunner, celery_app: Celery, redis_url: str) -> None:
    """State an earlier release wrote under `<prefix>breaker:NAME` is moved to the hash-tagged
    keys, expiry kept; a breaker that already has new state keeps it; the old keys go."""
    client = redis.Redis.from_url(redis_url)
    old = "telemetry_guard:breaker:"
    client.hset(old + "cli.held", mapping={"state": "open", "mode": "forced_open", "gen": "3"})
    client.hset(old + "cli.tripped", mapping={"state": "open", "mode": "normal", "gen": "1",
                                              "fails": "5", "opened_at": "1"})
    client.pexpire(old + "cli.tripped", 3_600_000)
    client.zadd(old + "cli.tripped:permits", {"1:1": 1})
    client.setbit(old + "cli.tripped:window", 3, 1)
    RedisBreakerStore("cli.both", BreakerConfig(), redis_url=redis_url).force_open()
    client.hset(old + "cli.both", mapping={"state": "closed", "mode": "normal", "gen": "0"})

    done = invoke(runner, celery_app, "breakers", "migrate-keys", "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert (report["moved"], report["kept_newer"]) == (["cli.held", "cli.tripped"], ["cli.both"])
    assert not [k for k in client.scan_iter(match=old + "cli.*") if b"{" not in k]
    assert client.hget("telemetry_guard:breaker:{cli.held}", "mode") == b"forced_open"
    assert client.pttl("telemetry_guard:breaker:{cli.held}") == -1
    assert 0 < client.pttl("telemetry_guard:breaker:{cli.tripped}") <= 3_600_000
    assert client.getbit("telemetry_guard:breaker:{cli.tripped}:window", 3) == 1
    assert client.zcard("telemetry_guard:breaker:{cli.tripped}:permits") == 1
    held = RedisBreakerStore("cli.held", BreakerConfig(), redis_url=redis_url).snapshot()
    assert (held.state, held.mode, held.generation) == ("open", "forced_open", 3)
    assert client.hget("telemetry_guard:breaker:{cli.both}", "state") == b"open"

    again = invoke(runner, celery_app, "breakers", "migrate-keys", "--json")
    assert json.loads(again.stdout)["moved"] == []
