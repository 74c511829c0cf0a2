"""End to end, live: the periodic alerts fire in a real Prometheus that scrapes the real
``/metrics`` of a real ``celery beat`` (``beat_metrics_port``) and of a real prefork
``celery worker`` (``metrics_port``), both under ``job="celery"``, on a private Redis.

The app (``tests.apps.periodic_app``) sends ``periodic.tick`` (done at once) and
``periodic.slow`` (sleeps past its interval) every second and beats every 0.5 s; the rules
are the generated ones with every ``for:`` cut to 1 s. Needs the Debian package
``prometheus`` (the test fails without it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from telemetry_guard.dashboards.periodic_promql import LAST_RUN, LAST_SUCCESS, PeriodicStates
from tests.fast_rules import rule_files_with_short_for
from tests.periodic_processes import Processes, periodic_processes
from tests.prometheus_server import Prometheus
from tests.servers import wait_for

#: A real Prometheus evaluating rules: in the slow suite (``make test-reliability``).
pytestmark = pytest.mark.slow

JOB = "celery"
TICK, SLOW = "periodic.tick", "periodic.slow"
MISSED = "TelemetryGuardPeriodicTaskMissed"
OVERLAPPING = "TelemetryGuardPeriodicTaskOverlapping"
BEAT_DOWN = "TelemetryGuardBeatDown"
PERIODIC_ALERTS = (MISSED, "TelemetryGuardPeriodicTaskLate", OVERLAPPING,
                   "TelemetryGuardPeriodicTaskFailing", BEAT_DOWN)


@dataclass
class Live:
    """Beat and worker processes, and the Prometheus that scrapes both."""

    processes: Processes
    prometheus: Prometheus

    def alerts(self, state: str = "firing") -> set[tuple[str, str]]:
        """(alert name, task) of the periodic alerts in ``state`` (task empty: beat down)."""
        return self.prometheus.alerts_by_task(JOB, state, PERIODIC_ALERTS)

    def up(self) -> dict[int, bool]:
        """Whether Prometheus's last scrape of each port of the job succeeded."""
        return {int(s["metric"]["instance"].rsplit(":", 1)[1]): s["value"][1] == "1"
                for s in self.prometheus.query(f'up{{job="{JOB}"}}')}

    def latest(self, metric: str, task: str) -> float | None:
        """``metric`` of ``task`` as Prometheus has it now (max over the instances)."""
        result = self.prometheus.query(f'max({metric}{{job="{JOB}", task="{task}"}})')
        return float(result[0]["value"][1]) if result else None

    def ever_active(self, expr_matchers: str, since: float) -> list[str]:
        """ALERTS series matching ``expr_matchers`` active at any evaluation since ``since``."""
        window = max(1, int(time.time() - since) + 1)
        result = self.prometheus.query(
            f"count_over_time(ALERTS{{{expr_matchers}}}[{window}s])")
        return [f"{s['metric']['alertname']}/{s['metric'].get('task', '')}/"
                f"{s['metric']['alertstate']}" for s in result]

    def explain(self, what: str) -> str:
        return (f"{what}: firing {sorted(self.alerts())}, pending "
                f"{sorted(self.alerts('pending'))}, up {self.up()}\n"
                f"{self.prometheus.log_text()}\n{self.processes.logs()}")

    def wait(self, check: Callable[[], object], what: str, timeout: float = 20) -> None:
        try:
            wait_for(check, timeout=timeout, interval=0.25)
        except AssertionError:
            pytest.fail(self.explain(what))

    def hold(self, check: Callable[[], bool], what: str, seconds: float) -> None:
        """``check`` holds at every poll for ``seconds`` (a few rule evaluations)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert check(), self.explain(what)
            time.sleep(0.25)


@pytest.fixture
def processes(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[Processes]:
    yield from periodic_processes(redis_url, tmp_path, monkeypatch)


@pytest.fixture
def live(processes: Processes, tmp_path: Path) -> Iterator[Live]:
    ports = [processes.metrics_port, processes.worker_metrics_port]
    prometheus = Prometheus(tmp_path, {JOB: ports}, rule_files_with_short_for())
    try:
        prometheus.wait_ready(timeout=30)
        yield Live(processes, prometheus)
    finally:
        prometheus.stop()


def test_beat_down_then_missed_then_overlapping_fire_from_live_processes(live: Live) -> None:
    """Beat and worker up: no alert for the healthy task, the slow one overlaps. Beat stopped:
    TelemetryGuardBeatDown fires and the missed alert does not, although the task is missed.
    Beat back and the worker stopped: the missed alert fires from beat's /metrics alone."""
    procs = live.processes
    started = time.time()
    beat_port, worker_port = procs.metrics_port, procs.worker_metrics_port
    procs.start_worker()
    live.wait(procs.worker_ready, "the worker consuming")
    procs.start_beat()
    live.wait(lambda: live.up() == {beat_port: True, worker_port: True},
              "beat's and the worker's /metrics scraped")

    # 1. both running: the tick runs and raises no alert; the slow task overlaps
    live.wait(lambda: live.latest(LAST_SUCCESS, TICK), "a successful tick in Prometheus")
    live.wait(lambda: (OVERLAPPING, SLOW) in live.alerts(), "the slow task overlapping")
    last_run = live.latest(LAST_RUN, TICK)
    live.wait(lambda: (live.latest(LAST_RUN, TICK) or 0) > (last_run or 0), "the tick again")
    assert not {alert for alert in live.alerts() if alert[1] == TICK}
    assert live.ever_active(f'task="{TICK}", alertstate="firing"', since=started) == [], \
        live.explain("an alert fired for the tick")
    assert BEAT_DOWN not in {name for name, _ in live.alerts() | live.alerts("pending")}

    # 2. beat stopped: beat down, and the missed alert held back though the tick is missed
    procs.stop_beat()
    stopped = time.time()
    live.wait(lambda: (BEAT_DOWN, "") in live.alerts(), "beat down firing")
    missed_now = PeriodicStates(("job",)).missed()
    live.wait(lambda: TICK in {s["metric"]["task"] for s in live.prometheus.query(missed_now)},
              "the tick missed by Prometheus's reckoning")
    live.hold(lambda: MISSED not in {name for name, _ in live.alerts()}
              and (BEAT_DOWN, "") in live.alerts(), "missed held back while beat is down", 3)
    assert live.ever_active(f'alertname="{MISSED}", alertstate="firing"', since=stopped) == []
    assert not live.up()[beat_port]

    # 3. beat back, worker stopped: the tick is missed, told by beat's /metrics alone
    procs.start_beat()
    restarted = time.time()
    live.wait(lambda: live.up()[beat_port] and BEAT_DOWN not in
              {name for name, _ in live.alerts() | live.alerts("pending")}, "beat back")
    live.wait(lambda: (live.latest(LAST_RUN, TICK) or 0) > restarted,
              "the tick run again after beat's return")
    procs.stop_worker()
    live.wait(lambda: live.up() == {beat_port: True, worker_port: False},
              "the worker's /metrics gone, beat's scraped")
    live.wait(lambda: (MISSED, TICK) in live.alerts(), "the tick missed, firing")
    assert live.up() == {beat_port: True, worker_port: False}
    assert (BEAT_DOWN, "") not in live.alerts()
