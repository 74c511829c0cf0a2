"""End to end: a real Prometheus scrapes a fleet of two prefork workers; dashboards and alerts
work on it, for each job on its own.

Two ``celery worker -P prefork`` subprocesses run ``tests/apps/e2e_app.py``, scraped as two
jobs. The busy one (job ``payments``) runs through successes, retries, give-ups, a CRITICAL
failure (whose e-mail fails), a failing span exporter, a burst that exhausts the retry
budget and a circuit breaker that trips open. The quiet one (job ``reports``, its own queue,
metrics port and Redis database) only has successes, a retry that recovers, a give-up of an
invalid payload and calls through a healthy breaker. A private ``prometheus`` server (Debian
package ``prometheus``; the test fails without it, it never skips) scrapes both every second
and evaluates copies of ``alerts/*.rules.yml`` whose ``for:`` durations are cut to 1 s.

Through Prometheus's HTTP API the test then checks every PromQL expression of every
dashboard panel (but the periodic tasks dashboard's: these workers have no beat schedule;
``test_periodic_alerts_e2e.py`` checks it) as Grafana runs it with the ``job`` variable on
All, on the busy job and on the quiet job (every other variable on All): each evaluates and
returns data, a number other than 0 but for the panels ``NO_ACTIVITY_EXPECTED`` names; for
the quiet job the panels of
trouble it never had show 0 (``QUIET_JOB_AT_ZERO``) or, where a panel has no fallback, no
data (``QUIET_JOB_NO_DATA``): nothing of the busy job leaks in. No rule fails to
evaluate; ``TelemetryGuardBreakerOpen`` and ``TelemetryGuardCriticalFailure`` fire for the
busy job, never (not even pending) for the quiet one, and their ``dashboard_url`` opens a
dashboard on the busy job.

Why the quiet job has its own Redis database: a breaker's state lives in Redis and every
worker that defines the breaker reports it, so the quiet worker, same code on the same Redis,
would rightly show the busy job's breaker open too; and on one broker both workers consume
the one ``telemetry_guard.notifications`` queue, so the busy job's notification may be sent,
and counted, by the quiet job's worker.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from telemetry_guard.breaker import BreakerConfig, RedisBreakerStore
from telemetry_guard.dashboards import all_queries, dashboards, substitute_variables
from tests.prometheus_server import Prometheus
from tests.servers import RedisServer, free_port, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "alerts"
#: The two scrape jobs, and the queue each one's worker consumes.
BUSY_JOB = "payments"
QUIET_JOB = "reports"
QUEUE = "e2e"
QUIET_QUEUE = "e2e.reports"
NOTIFICATION_QUEUE = "telemetry_guard.notifications"
#: Every ``for:`` of the rule copies becomes this (a zero ``for:`` stays zero).
TEST_FOR = "1s"
ALERTS_THAT_MUST_FIRE = ("TelemetryGuardBreakerOpen", "TelemetryGuardCriticalFailure")
#: The circuit breakers of tests/apps/e2e_app.py: one trips open, one stays closed.
BREAKER = "e2e.dependency"
HEALTHY_BREAKER = "e2e.lookup"

#: Panels whose value is legitimately 0 for this workload, with the reason. They must
#: return data like every panel; every other panel must show a number other than 0.
NO_ACTIVITY_EXPECTED: dict[tuple[str, str], str] = {
    ("telemetry-guard-breakers", "Breakers half-open now"):
        "the breaker's reset_timeout is an hour: it never half-opens during the test",
    ("telemetry-guard-health", "Notifications throttled in range"):
        "every mail fails (the SMTP port is closed); only a mail that went out throttles "
        "the next ones",
}

#: For the quiet job: panels of trouble it never had, which must show 0 (a stat's
#: ``or vector(0)``, or a closed breaker) and nothing of the busy job.
QUIET_JOB_AT_ZERO: dict[tuple[str, str], str] = {
    ("telemetry-guard-tasks", "Critical failures in range"): "no critical failure",
    ("telemetry-guard-breakers", "Breakers open now"): "no breaker open",
    ("telemetry-guard-breakers", "Breakers half-open now"): "no breaker half-open",
    ("telemetry-guard-breakers", "Rejected calls in range"): "no call rejected",
    ("telemetry-guard-breakers", "Trips to open in range"): "no breaker tripped",
    ("telemetry-guard-breakers", "Breaker state"): "every breaker closed",
    ("telemetry-guard-breakers", "Failure ratio of attempted calls"):
        "every call through its breaker succeeded",
    ("telemetry-guard-health", "Notifications failed in range"): "nothing notified",
    ("telemetry-guard-health", "Notifications throttled in range"): "nothing notified",
    ("telemetry-guard-health", "Retries refused by budget in range"):
        "the retry budget is never exhausted",
}
#: For the quiet job: panels with no fallback whose series only exist after trouble it
#: never had. They return no data (0 would do); a number other than 0 would be the busy job's.
QUIET_JOB_NO_DATA: dict[tuple[str, str], str] = {
    ("telemetry-guard-breakers", "Transitions by breaker"):
        "no breaker ever left closed: a transition counter is born at its first transition",
    ("telemetry-guard-breakers", "Rejected calls rate"):
        "only an open breaker rejects, and an open breaker fires TelemetryGuardBreakerOpen",
    ("telemetry-guard-health", "Notifications by channel and outcome"):
        "only a critical failure is notified (default routes: e-mail for critical, Sentry "
        "for high and critical; Sentry is not configured)",
    ("telemetry-guard-health", "Failed notifications by channel and severity"):
        "nothing notified, so nothing failed",
    ("telemetry-guard-health", "Retry budget exhaustion by task"):
        "the retry budget is never exhausted",
}

_FOR_LINE = re.compile(r"^(?P<key>[ \t]*for:[ \t]*)(?P<value>[^\s#]+)", re.MULTILINE)
_ZERO = re.compile(r"^0+(ms|s|m|h|d|w|y)?$")


def shorten_for_durations(text: str, duration: str = TEST_FOR) -> tuple[str, int]:
    """The rule file ``text`` with every non-zero ``for:`` set to ``duration``; how many."""
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        if _ZERO.match(match["value"]):
            return match[0]
        count += 1
        return match["key"] + duration

    return _FOR_LINE.sub(replace, text), count


def shortened_rule_files() -> dict[str, str]:
    """Copies of ``alerts/*.rules.yml`` whose ``for:`` durations are cut to ``TEST_FOR``."""
    return {source.name: shorten_for_durations(source.read_text(encoding="utf-8"))[0]
            for source in sorted(ALERTS.glob("*.rules.yml"))}


class E2EWorker:
    """``celery -A tests.apps.e2e_app worker -P prefork`` serving /metrics from its main process.

    It consumes ``queue`` (the app's default queue, so retries come back to it) and the
    notification queue; its files live in ``tmp/<name>``.
    """

    def __init__(self, broker: str, tmp: Path, port: int, *, name: str, queue: str,
                 concurrency: int) -> None:
        self.name = name
        self.port = port
        tmp = tmp / name
        multiproc = tmp / "prom-multiproc"
        multiproc.mkdir(parents=True)
        email = {"host": "127.0.0.1", "port": free_port(), "timeout": 2,  # nothing listens
                 "sender": "telemetry-guard@example.com", "recipients": ["oncall@example.com"],
                 "retry_max_retries": 0}
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith(("TELEMETRY_GUARD_", "SENTRY_"))}
        env = dict(inherited, TG_TEST_BROKER=broker, TG_TEST_QUEUE=queue, PYTHONPATH=str(ROOT),
                   PROMETHEUS_MULTIPROC_DIR=str(multiproc),
                   TELEMETRY_GUARD_METRICS_PORT=str(port),
                   TELEMETRY_GUARD_METRICS_ADDRESS="127.0.0.1",
                   TELEMETRY_GUARD_EMAIL=json.dumps(email))
        self.log_path = tmp / "worker.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.apps.e2e_app", "worker",
             "-P", "prefork", "-c", str(concurrency), "-Q", f"{queue},{NOTIFICATION_QUEUE}",
             "-l", "WARNING",
             "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_serving(self, timeout: float) -> None:
        def serving() -> bool:
            assert self.proc.poll() is None, f"{self.name} worker exited:\n{self.log_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                            timeout=1) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_for(serving, timeout=timeout, interval=0.1)

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


@dataclass
class Fleet:
    """The busy and the quiet worker, and the Prometheus scraping both."""

    busy: E2EWorker
    quiet: E2EWorker
    prometheus: Prometheus

    def logs(self) -> str:
        """The end of each worker's log, for a failure message."""
        return "".join(f"\n--- {w.name} worker log ---\n{w.log_text()}"
                       for w in (self.busy, self.quiet))


@pytest.fixture
def quiet_redis_url(redis_server: RedisServer, redis_url: str) -> str:
    """Another database of the private server: the quiet job's broker, breakers and budget."""
    db = (int(redis_url.rsplit("/", 1)[-1]) + 32) % 64
    redis_server.client(db).flushdb()
    return f"{redis_server.url}/{db}"


@pytest.fixture
def stack(redis_url: str, quiet_redis_url: str, tmp_path: Path) -> Iterator[Fleet]:
    """Two prefork workers and a Prometheus scraping them as two jobs, started side by side."""
    busy_port, quiet_port = free_port(), free_port()
    while quiet_port == busy_port:
        quiet_port = free_port()
    prometheus = Prometheus(tmp_path, {BUSY_JOB: busy_port, QUIET_JOB: quiet_port},
                            shortened_rule_files())
    busy = E2EWorker(redis_url, tmp_path, busy_port, name=BUSY_JOB, queue=QUEUE,
                     concurrency=2)
    quiet = E2EWorker(quiet_redis_url, tmp_path, quiet_port, name=QUIET_JOB,
                      queue=QUIET_QUEUE, concurrency=1)
    try:
        prometheus.wait_ready(timeout=30)
        busy.wait_serving(timeout=30)
        quiet.wait_serving(timeout=30)
        yield Fleet(busy, quiet, prometheus)
    finally:
        quiet.stop()
        busy.stop()
        prometheus.stop()


def make_producer(broker: str, queue: str) -> Celery:
    """A Celery app that sends to ``queue`` on ``broker`` and reads results from it."""
    app = Celery("e2e_producer", broker=broker, backend=broker, set_as_current=False)
    app.conf.task_default_queue = queue
    return app


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    """Sends the busy job's tasks."""
    app = make_producer(redis_url, QUEUE)
    yield app
    app.close()


@pytest.fixture
def quiet_producer(quiet_redis_url: str) -> Iterator[Celery]:
    """Sends the quiet job's tasks."""
    app = make_producer(quiet_redis_url, QUIET_QUEUE)
    yield app
    app.close()


def finish(producer: Celery, name: str, times: int = 1, *args: Any) -> list[Any]:
    """Send ``times`` runs of task ``name`` and wait for their results (exceptions included)."""
    results = [producer.send_task(name, args=args) for _ in range(times)]
    return [r.get(timeout=30, propagate=False) for r in results]


def worker_value(worker: E2EWorker, name: str, **labels: str) -> float:
    """One sample of the worker's own /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics",
                                timeout=5) as response:
        text = response.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == name and s.labels == labels)


def breaker_calls(worker: E2EWorker, outcome: str) -> float:
    """``telemetry_guard_breaker_calls_total`` of the test's breaker."""
    return worker_value(worker, "telemetry_guard_breaker_calls_total", breaker=BREAKER,
                        outcome=outcome)


def run_round(producer: Celery, worker: E2EWorker) -> None:
    """One round of the workload, every task finished; the breaker ends open."""
    assert finish(producer, "e2e.ok", 5, 1) == [1] * 5
    assert finish(producer, "e2e.flaky", 2) == ["recovered"] * 2
    finish(producer, "e2e.exhausted")
    finish(producer, "e2e.invalid", 2, {"sku": "A-1"})
    finish(producer, "e2e.ledger")
    refused = worker_value(worker, "telemetry_guard_retry_budget_exhausted_total",
                           task="e2e.storm")
    finish(producer, "e2e.storm", 30)
    assert worker_value(worker, "telemetry_guard_retry_budget_exhausted_total",
                        task="e2e.storm") > refused
    # One call at a time until two have failed and tripped the breaker (a worker child may
    # still hold a cached open view for up to a second after a reset: it rejects)...
    tripped = breaker_calls(worker, "failure") + 2
    for _ in range(50):
        if breaker_calls(worker, "failure") >= tripped:
            break
        assert finish(producer, "e2e.dependency") == ["fallback"]
    assert breaker_calls(worker, "failure") == tripped
    # ... then calls are rejected and served by the fallback.
    rejected = breaker_calls(worker, "rejected")
    assert finish(producer, "e2e.dependency", 2) == ["fallback"] * 2
    assert breaker_calls(worker, "rejected") == rejected + 2


#: What Prometheus must have scraped of the busy job after a round of its workload (the
#: notification, sent by the notification task after the critical failure, comes last).
ROUND_SELECTORS = (
    "telemetry_guard_task_runtime_seconds_count",
    "telemetry_guard_task_failures_total",
    "telemetry_guard_task_retries_total",
    "telemetry_guard_task_giveups_total",
    'telemetry_guard_breaker_calls_total{outcome="rejected"}',
    "telemetry_guard_breaker_transitions_total",
    "telemetry_guard_telemetry_errors_total",
    "telemetry_guard_retry_budget_exhausted_total",
    'telemetry_guard_notifications_total{outcome="failed"}',
)
#: What Prometheus must have scraped of the quiet job: at least so many per round.
QUIET_ROUND_COUNTS = (
    ('telemetry_guard_task_runtime_seconds_count{task="e2e.ok", outcome="success"}', 3),
    ('telemetry_guard_task_retries_total{task="e2e.flaky"}', 1),
    ('telemetry_guard_task_giveups_total{task="e2e.invalid"}', 1),
    (f'telemetry_guard_breaker_calls_total{{breaker="{HEALTHY_BREAKER}", outcome="success"}}', 2),
)


def on_job(selector: str, job: str) -> str:
    """``selector`` (``name`` or ``name{matchers}``) restricted to the scrape job ``job``."""
    name, _, matchers = selector.partition("{")
    matchers = matchers.rstrip("}")
    return f'{name}{{job="{job}"{", " + matchers if matchers else ""}}}'


def at_least(prometheus: Prometheus, selector: str, count: float) -> bool:
    """Whether the series of ``selector`` add up to ``count`` or more."""
    return bool(prometheus.query(f"sum({selector}) >= {count}"))


def scraped(prometheus: Prometheus, rounds: int) -> bool:
    """Whether Prometheus holds the busy job's counts of ``rounds`` rounds of its workload."""
    def busy(selector: str) -> str:
        return on_job(selector, BUSY_JOB)

    return (all(prometheus.query(busy(selector)) for selector in ROUND_SELECTORS)
            and at_least(prometheus, busy('telemetry_guard_notifications_total{outcome="failed"}'),
                         rounds)
            and at_least(prometheus,
                         busy('telemetry_guard_breaker_transitions_total{to_state="open"}'),
                         rounds)
            and at_least(prometheus,
                         busy('telemetry_guard_task_runtime_seconds_count{task="e2e.ok"}'),
                         5 * rounds))


def quiet_scraped(prometheus: Prometheus, rounds: int) -> bool:
    """Whether Prometheus holds the quiet job's counts of ``rounds`` rounds of its workload."""
    return all(at_least(prometheus, on_job(selector, QUIET_JOB), count * rounds)
               for selector, count in QUIET_ROUND_COUNTS)


def run_quiet_round(producer: Celery) -> None:
    """One round of the quiet job's workload, every task finished: nothing critical, no
    breaker trips, the retry budget suffices."""
    assert finish(producer, "e2e.ok", 3, 2) == [2] * 3
    assert finish(producer, "e2e.flaky") == ["recovered"]
    [invalid] = finish(producer, "e2e.invalid", 1, {"sku": "B-2"})
    assert isinstance(invalid, ValueError), invalid
    assert finish(producer, "e2e.lookup", 2, "invoice-7") == ["found invoice-7"] * 2


def shows_activity(result: list[Any]) -> bool:
    """Whether a query result has a series whose current value is a number other than 0."""
    for series in result:
        value = series.get("value", [None, "NaN"])[1]
        if value not in ("NaN", "+Inf", "-Inf") and float(value) != 0:
            return True
    return False


ALL_JOBS = ".*"


def as_grafana_runs_it(expr: str, job: str) -> str:
    """A panel's expression with the ``job`` variable on ``job`` (``.*``: All) and every other
    variable on All."""
    return substitute_variables(expr.replace("$job", job))


#: The periodic tasks dashboard: these workers run no beat and have no beat schedule, so it
#: shows nothing here; tests/reliability/test_periodic_alerts_e2e.py checks it.
PERIODIC_DASHBOARD = "telemetry-guard-periodic"


def panel_problems(prometheus: Prometheus, job: str) -> list[str]:
    """What the dashboards get wrong with the ``job`` variable on ``job`` (``.*``: All)."""
    problems = []
    for uid, title, expr in all_queries():
        if uid == PERIODIC_DASHBOARD:
            continue
        panel = (uid, title)
        query = as_grafana_runs_it(expr, job)
        result = prometheus.query(query)  # an evaluation error fails at once
        where = f"{uid} / {title}: {query}"
        if job == QUIET_JOB and panel in QUIET_JOB_NO_DATA:
            if shows_activity(result):
                problems.append(f"trouble the quiet job never had: {where} -> {result}")
        elif not result:
            problems.append(f"no data: {where}")
        elif job == QUIET_JOB and panel in QUIET_JOB_AT_ZERO:
            if shows_activity(result):
                problems.append(f"not 0 for the quiet job: {where} -> {result}")
        elif not shows_activity(result) and panel not in NO_ACTIVITY_EXPECTED:
            problems.append(f"only 0 or NaN: {where} -> {result}")
    return problems


def test_dashboards_and_alerts_work_per_job_on_a_real_prometheus(
        stack: Fleet, producer: Celery, quiet_producer: Celery, redis_url: str) -> None:
    """Every panel shows each job's own workload, every rule evaluates, breaker and critical
    alerts fire for the busy job only, with a dashboard link on that job."""
    prometheus, worker = stack.prometheus, stack.busy
    started = time.monotonic()

    def both_up() -> bool:
        return {s["metric"]["job"] for s in prometheus.query("up == 1")} == {BUSY_JOB, QUIET_JOB}

    try:
        wait_for(both_up, timeout=15)
    except AssertionError:
        pytest.fail(f"the workers are not scraped: {prometheus.api('targets')['activeTargets']}")

    # The rule copies loaded, with the shortened `for:`.
    alerting = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]
                if r["type"] == "alerting"]
    assert sum(shorten_for_durations(path.read_text(encoding="utf-8"))[1]
               for path in ALERTS.glob("*.rules.yml")) > 0
    assert {r["name"] for r in alerting} >= set(ALERTS_THAT_MUST_FIRE)
    assert all(r["duration"] <= 1 for r in alerting), [(r["name"], r["duration"])
                                                        for r in alerting]

    def wait_scraped(rounds: int) -> None:
        try:
            wait_for(lambda: scraped(prometheus, rounds) and quiet_scraped(prometheus, rounds),
                     timeout=20, interval=0.25)
        except AssertionError:
            pytest.fail(f"round {rounds} of the workload not scraped{stack.logs()}")

    # A labelled counter is born at its first increment, and rate() / increase() cannot see
    # that step: a second round, after Prometheus saw the first, gives the panels real rates.
    run_round(producer, worker)
    run_quiet_round(quiet_producer)
    wait_scraped(1)
    reset = RedisBreakerStore(BREAKER, BreakerConfig(failure_threshold=2, reset_timeout=3600.0),
                              redis_url=redis_url).reset()  # as `telemetry-guard breakers reset`
    assert [(t.from_state, t.to_state) for t in reset] == [("open", "closed")]
    run_round(producer, worker)
    run_quiet_round(quiet_producer)
    wait_scraped(2)

    panels = {(uid, title) for uid, title, _ in all_queries()}
    for listed in (NO_ACTIVITY_EXPECTED, QUIET_JOB_AT_ZERO, QUIET_JOB_NO_DATA):
        assert set(listed) <= panels, f"no such panel: {sorted(set(listed) - panels)}"
    assert not set(QUIET_JOB_AT_ZERO) & set(QUIET_JOB_NO_DATA)

    # The dashboards as Grafana shows them on All, on the busy job, on the quiet job.
    for job in (ALL_JOBS, BUSY_JOB, QUIET_JOB):
        try:
            wait_for(lambda job=job: not panel_problems(prometheus, job), timeout=20,
                     interval=0.5)
        except AssertionError:
            pytest.fail(f"dashboard panels wrong with job={job}:\n"
                        + "\n".join(panel_problems(prometheus, job)) + stack.logs())

    def firing(job: str) -> set[str]:
        return {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]
                if a["state"] == "firing" and a["labels"].get("job") == job}

    try:
        wait_for(lambda: firing(BUSY_JOB) >= set(ALERTS_THAT_MUST_FIRE), timeout=20,
                 interval=0.5)
    except AssertionError:
        pytest.fail(f"alerts firing for {BUSY_JOB}: {sorted(firing(BUSY_JOB))}; "
                    f"wanted {ALERTS_THAT_MUST_FIRE}")
    alerts = prometheus.api("alerts")["alerts"]
    assert {a["labels"].get("job") for a in alerts} <= {BUSY_JOB, QUIET_JOB}, \
        [a["labels"] for a in alerts if a["labels"].get("job") not in (BUSY_JOB, QUIET_JOB)]
    must_fire = [a for a in alerts if a["labels"]["alertname"] in ALERTS_THAT_MUST_FIRE]
    assert not [a["labels"] for a in must_fire if a["labels"]["job"] != BUSY_JOB]

    # Never for the quiet job, not even pending: the ALERTS series of the whole run.
    def ever(job: str) -> set[str]:
        result = prometheus.query(
            f'count_over_time(ALERTS{{alertname=~"{"|".join(ALERTS_THAT_MUST_FIRE)}", '
            f'job="{job}"}}[1h])')
        return {s["metric"]["alertname"] for s in result}

    assert ever(BUSY_JOB) == set(ALERTS_THAT_MUST_FIRE)
    assert ever(QUIET_JOB) == set()
    assert {a["labels"].get("breaker") for a in must_fire
            if a["labels"]["alertname"] == "TelemetryGuardBreakerOpen"} == {BREAKER}
    assert {a["labels"].get("task") for a in must_fire
            if a["labels"]["alertname"] == "TelemetryGuardCriticalFailure"} == {"e2e.ledger"}

    # Each alert's dashboard link opens an existing dashboard on the busy job; every
    # variable it sets is one of that dashboard's.
    variables = {board["uid"]: {v["name"] for v in board["templating"]["list"]}
                 for board in dashboards()}
    for alert in must_fire:
        url = urllib.parse.urlsplit(alert["annotations"]["dashboard_url"])
        uid = url.path.rsplit("/", 1)[-1]
        params = urllib.parse.parse_qs(url.query)
        assert uid in variables, url.geturl()
        assert params.get("var-job") == [BUSY_JOB], url.geturl()
        assert {name.removeprefix("var-") for name in params} <= variables[uid], url.geturl()

    broken = [(r["name"], r.get("lastError")) for g in prometheus.api("rules")["groups"]
              for r in g["rules"] if r.get("health") == "err"]
    assert not broken, broken
    assert time.monotonic() - started < 80
