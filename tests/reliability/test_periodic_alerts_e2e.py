"""End to end: the periodic alerts and the periodic tasks dashboard on a real Prometheus,
scraping the periodic contract's metric families.

A private ``prometheus`` server (Debian package ``prometheus``; the test fails without it)
scrapes every second an exposition of the contract's families (``ContractExposition``: a
real prometheus_client registry behind a real HTTP endpoint, whose values the test sets)
and evaluates the generated rules, built by the same ``RuleBuilder`` with every ``for:``
cut to 1 s.

The exposition stands in for the collector that reads the periodic state from Redis: to
run these tests on the real collector, replace the ``exposition`` fixture by one that
serves the collector's ``/metrics`` with the same task states written through Redis (the
``TASKS`` table says what each task's state is); the assertions stay. The live test
(``test_periodic_alerts_live.py``) fires beat down, missed and overlapping from real beat and
worker processes; this one also covers late, failing and waiting, and the dashboard's panels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from telemetry_guard.dashboards import all_queries, substitute_variables
from telemetry_guard.dashboards.periodic_promql import STATE_CODES, PeriodicStates
from tests.fast_rules import rule_files_with_short_for
from tests.prometheus_server import Prometheus
from tests.servers import wait_for

#: A real Prometheus evaluating rules: in the slow suite (``make test-reliability``).
pytestmark = pytest.mark.slow

JOB = "celery"
PERIODIC_DASHBOARD = "telemetry-guard-periodic"
HEARTBEAT_INTERVAL = 10.0
#: The alerts held back while beat is down.
HELD_BACK = ("TelemetryGuardPeriodicTaskMissed", "TelemetryGuardPeriodicTaskLate",
             "TelemetryGuardPeriodicTaskFailing")


@dataclass(frozen=True)
class TaskState:
    """One beat entry's exported state, relative to now (``None``: the series is absent;
    ``LIVE``: the current time at every scrape)."""

    state: str
    interval: float = 60.0
    tolerance: float = 1.5
    last_run: float | None = None
    last_success: float | None = None
    last_failure: float | None = None
    monitored_since: float = -3600.0
    start_delay: float | None = None
    running: int = 0
    overlaps: int = 0
    #: The deadline beat computed from the schedule (``None``: not exported).
    missed_after: float | None = None


LIVE = 0.0
#: The entries, and the state each must show while beat is up.
TASKS: dict[str, TaskState] = {
    # due every minute, last ran 10 minutes ago
    "e2e.report": TaskState("missed", last_run=-600, last_success=-590, start_delay=1),
    # runs on time
    "e2e.fresh": TaskState("ok", last_run=LIVE, last_success=LIVE, start_delay=2, running=1),
    # due hourly, never ran, monitoring saw it just now: within its window
    "e2e.new": TaskState("waiting", interval=3600, monitored_since=LIVE),
    # starts 45 s after beat sends it, due every minute
    "e2e.slow": TaskState("late", last_run=LIVE, last_success=LIVE, start_delay=45),
    # two runs in progress, one overlap counted
    "e2e.long": TaskState("overlapping", last_run=LIVE, last_success=-30, start_delay=1,
                          running=2, overlaps=1),
    # its last run gave up after the last success
    "e2e.broken": TaskState("failing", last_run=LIVE, last_success=-100, last_failure=-5,
                            start_delay=1),
    # a weekday crontab on a Saturday: last ran Friday (over interval x tolerance ago), its
    # deadline (Monday's due time plus the slack) still ahead
    "e2e.weekday": TaskState("ok", interval=86400, last_run=-37 * 3600,
                             last_success=-37 * 3600 + 5, start_delay=1,
                             missed_after=2 * 86400),
    # an uneven crontab whose next slot came soon: within interval x tolerance, but past
    # its deadline
    "e2e.deadline": TaskState("missed", interval=3600, last_run=-600, last_success=-590,
                              start_delay=1, missed_after=-60),
}
MISSED = {task for task, state in TASKS.items() if state.state == "missed"}
#: Which alert each state raises (ok and waiting raise none).
ALERT_OF_STATE = {"missed": "TelemetryGuardPeriodicTaskMissed",
                  "late": "TelemetryGuardPeriodicTaskLate",
                  "overlapping": "TelemetryGuardPeriodicTaskOverlapping",
                  "failing": "TelemetryGuardPeriodicTaskFailing"}


class ContractExposition:
    """``/metrics`` with the periodic contract's families, from a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

        def gauge(name: str, labels: tuple[str, ...] = ("task",)) -> Gauge:
            return Gauge(name, name, labels, registry=self.registry)

        prefix = "telemetry_guard_periodic_"
        self.last_run = gauge(f"{prefix}last_run_timestamp_seconds")
        self.last_success = gauge(f"{prefix}last_success_timestamp_seconds")
        self.last_failure = gauge(f"{prefix}last_failure_timestamp_seconds")
        self.interval = gauge(f"{prefix}expected_interval_seconds")
        self.tolerance = gauge(f"{prefix}tolerance_ratio")
        self.monitored_since = gauge(f"{prefix}monitored_since_timestamp_seconds")
        self.missed_after = gauge(f"{prefix}missed_after_timestamp_seconds")
        self.start_delay = gauge(f"{prefix}last_start_delay_seconds")
        self.running = gauge(f"{prefix}running")
        self.overlaps = Counter(f"{prefix}overlaps", "overlaps", ("task",),
                                registry=self.registry)
        self.heartbeat = gauge("telemetry_guard_beat_heartbeat_timestamp_seconds", ())
        self.heartbeat_interval = gauge("telemetry_guard_beat_heartbeat_interval_seconds", ())
        self.server, self.thread = start_http_server(0, addr="127.0.0.1",
                                                     registry=self.registry)
        self.port = self.server.server_port

    def set_tasks(self, tasks: dict[str, TaskState]) -> None:
        """Export ``tasks`` (times relative to now; ``LIVE`` times follow the clock)."""
        now = time.time()
        for task, state in tasks.items():
            timestamps = ((self.last_run, state.last_run),
                          (self.last_success, state.last_success),
                          (self.last_failure, state.last_failure),
                          (self.monitored_since, state.monitored_since),
                          (self.missed_after, state.missed_after))
            for family, offset in timestamps:
                if offset is not None:
                    family.labels(task).set_function(_clock(now, offset))
            self.interval.labels(task).set(state.interval)
            self.tolerance.labels(task).set(state.tolerance)
            if state.start_delay is not None:
                self.start_delay.labels(task).set(state.start_delay)
            self.running.labels(task).set(state.running)
            if state.overlaps:
                self.overlaps.labels(task).inc(state.overlaps)

    def beat_up(self) -> None:
        """A heartbeat at every scrape."""
        self.heartbeat.set_function(time.time)
        self.heartbeat_interval.set(HEARTBEAT_INTERVAL)

    def beat_down(self) -> None:
        """The last heartbeat was 2 minutes ago (down after 3 × 10 s)."""
        self.heartbeat.set_function(_clock(time.time(), -120))
        self.heartbeat_interval.set(HEARTBEAT_INTERVAL)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _clock(now: float, offset: float) -> Callable[[], float]:
    """``now + offset`` as fixed, or the current time at each call for ``LIVE``."""
    if offset == LIVE:
        return time.time
    return lambda: now + offset


@dataclass
class Stack:
    exposition: ContractExposition
    prometheus: Prometheus

    def alerts(self, state: str = "firing") -> set[tuple[str, str]]:
        """(alert name, task) of the alerts in ``state`` (``task`` empty for beat down)."""
        return self.prometheus.alerts_by_task(JOB, state)

    def ever_active(self, alertnames: tuple[str, ...]) -> list[dict[str, Any]]:
        """ALERTS series (pending or firing) of ``alertnames`` over the whole run."""
        return self.prometheus.query(
            f'count_over_time(ALERTS{{alertname=~"{"|".join(alertnames)}"}}[1h])')


@pytest.fixture
def exposition() -> Iterator[ContractExposition]:
    """The contract's families, served on a free port (see the module's docstring)."""
    served = ContractExposition()
    yield served
    served.stop()


@pytest.fixture
def stack(exposition: ContractExposition, tmp_path: Path) -> Iterator[Stack]:
    prometheus = Prometheus(tmp_path, {JOB: exposition.port}, rule_files_with_short_for())
    try:
        prometheus.wait_ready(timeout=30)
        yield Stack(exposition, prometheus)
    finally:
        prometheus.stop()


def wait_until(check: Callable[[], bool], what: str, stack: Stack, timeout: float = 15) -> None:
    try:
        wait_for(check, timeout=timeout, interval=0.25)
    except AssertionError:
        pytest.fail(f"{what}: firing {sorted(stack.alerts())}, pending "
                    f"{sorted(stack.alerts('pending'))}\n{stack.prometheus.log_text()}")


def state_codes(stack: Stack) -> dict[str, int]:
    """Each task's state code as the dashboard's state column computes it."""
    result = stack.prometheus.query(PeriodicStates().state_code())
    return {s["metric"]["task"]: int(float(s["value"][1])) for s in result}


def test_beat_down_fires_and_holds_back_missed_which_fires_once_beat_is_back(
        stack: Stack) -> None:
    """With beat down, TelemetryGuardBeatDown fires and the missed, late and failing alerts
    never even go pending although their conditions hold; once beat is back, each task's
    own alert fires, and none for a task on time or waiting for its first run."""
    codes = dict(STATE_CODES)
    stack.exposition.beat_down()  # first: no scrape may see the tasks without a heartbeat
    stack.exposition.set_tasks(TASKS)
    wait_until(lambda: ("TelemetryGuardBeatDown", "") in stack.alerts(), "beat down",
               stack)
    # The conditions hold (Prometheus sees a missed task)...
    missed = stack.prometheus.query(PeriodicStates(("job",)).missed())
    assert {s["metric"]["task"] for s in missed} == MISSED
    assert set(state_codes(stack).values()) == {codes["beat down"]}
    # ... a few more evaluations, and none of the held-back alerts was ever active.
    time.sleep(3)
    assert stack.ever_active(HELD_BACK) == []
    assert ("TelemetryGuardPeriodicTaskOverlapping", "e2e.long") in stack.alerts()

    stack.exposition.beat_up()
    wanted = {(ALERT_OF_STATE[state.state], task) for task, state in TASKS.items()
              if state.state in ALERT_OF_STATE}
    wait_until(lambda: stack.alerts() == wanted, "the periodic alerts with beat up", stack)
    assert "TelemetryGuardBeatDown" not in {name for name, _ in stack.alerts("pending")}
    assert state_codes(stack) == {task: codes[state.state] for task, state in TASKS.items()}
    broken = [(r["name"], r.get("lastError")) for g in stack.prometheus.api("rules")["groups"]
              for r in g["rules"] if r.get("health") == "err"]
    assert not broken, broken


def test_every_periodic_dashboard_panel_returns_data(stack: Stack) -> None:
    """Every query of the periodic tasks dashboard, as Grafana runs it with every variable on
    All, evaluates and returns data for the contract's families."""
    stack.exposition.beat_up()
    stack.exposition.set_tasks(TASKS)
    queries = [(title, substitute_variables(expr)) for uid, title, expr in all_queries()
               if uid == PERIODIC_DASHBOARD]
    assert len(queries) >= 10

    def missing() -> list[str]:
        return [f"{title}: {expr}" for title, expr in queries
                if not stack.prometheus.query(expr)]

    wait_until(lambda: not missing(), "panels without data", stack)
    by_title = dict(queries)
    [tasks] = stack.prometheus.query(by_title["Periodic tasks monitored"])
    assert float(tasks["value"][1]) == len(TASKS)
    [missed] = stack.prometheus.query(by_title["Missed now"])
    assert float(missed["value"][1]) == len(MISSED)
    # the share of the allowed silence passes 100 % for the missed tasks only (the weekday
    # crontab's silence counts up to its deadline, not to interval × tolerance)
    used = {s["metric"]["task"]: float(s["value"][1])
            for s in stack.prometheus.query(by_title["Missed window used"])}
    assert {task for task, share in used.items() if share > 1} == MISSED
