"""End to end: a real Prometheus scrapes a real prefork worker; dashboards and alerts work on it.

A ``celery worker -P prefork`` subprocess runs ``tests/apps/e2e_app.py`` through successes,
retries, give-ups, a CRITICAL failure (whose e-mail fails), a failing span exporter, a burst
that exhausts the retry budget and a circuit breaker that trips open. A private
``prometheus`` server (Debian package ``prometheus``; the test fails without it, it never
skips) scrapes the worker every second and evaluates copies of ``alerts/*.rules.yml`` whose
``for:`` durations are cut to 1 s. Through Prometheus's HTTP API the test then checks that
every PromQL expression of every dashboard panel evaluates and returns data (a number other
than 0, but for the few panels ``NO_ACTIVITY_EXPECTED`` names), that no rule fails to
evaluate, and that ``TelemetryGuardBreakerOpen`` and ``TelemetryGuardCriticalFailure`` fire.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from telemetry_guard.breaker import BreakerConfig, RedisBreakerStore
from telemetry_guard.dashboards import all_queries, substitute_variables
from tests.servers import free_port, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "alerts"
PROMETHEUS_PACKAGE = "prometheus"
QUEUE = "e2e"
NOTIFICATION_QUEUE = "telemetry_guard.notifications"
#: Every ``for:`` of the rule copies becomes this (a zero ``for:`` stays zero).
TEST_FOR = "1s"
ALERTS_THAT_MUST_FIRE = ("TelemetryGuardBreakerOpen", "TelemetryGuardCriticalFailure")
#: The circuit breaker of tests/apps/e2e_app.py.
BREAKER = "e2e.dependency"

#: Panels whose value is legitimately 0 for this workload, with the reason. They must
#: return data like every panel; every other panel must show a number other than 0.
NO_ACTIVITY_EXPECTED: dict[tuple[str, str], str] = {
    ("telemetry-guard-breakers", "Breakers half-open now"):
        "the breaker's reset_timeout is an hour: it never half-opens during the test",
    ("telemetry-guard-health", "Notifications throttled in range"):
        "every mail fails (the SMTP port is closed); only a mail that went out throttles "
        "the next ones",
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


class PrometheusAPIError(Exception):
    """Prometheus answered an API call with an error (e.g. a query that does not evaluate)."""


class Prometheus:
    """A private ``prometheus`` server on a free port with a throw-away TSDB."""

    def __init__(self, tmp: Path, worker_port: int) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus not found on PATH: install the Debian package "
                        f"`{PROMETHEUS_PACKAGE}` (apt-get install {PROMETHEUS_PACKAGE})")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = tmp / "rules"
        rules.mkdir()
        self.shortened = 0
        for source in sorted(ALERTS.glob("*.rules.yml")):
            text, count = shorten_for_durations(source.read_text(encoding="utf-8"))
            (rules / source.name).write_text(text, encoding="utf-8")
            self.shortened += count
        config = {  # JSON is YAML: no YAML library needed
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(rules / "*.rules.yml")],
            "scrape_configs": [{
                "job_name": "telemetry_guard_worker",
                "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
            }],
        }
        config_file = tmp / "prometheus.yml"
        config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.log_path = tmp / "prometheus.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config_file}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log_text()}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_for(ready, timeout=timeout, interval=0.1)

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of one API answer; raises PrometheusAPIError with Prometheus's message."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusAPIError(
                f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[Any]:
        """The result of an instant query at the current time."""
        data = self.api("query", query=expr)
        result = data["result"]
        return result if isinstance(result, list) else [result]

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class E2EWorker:
    """``celery -A tests.apps.e2e_app worker -P prefork`` serving /metrics from its main process."""

    def __init__(self, broker: str, tmp: Path, port: int) -> None:
        self.port = port
        multiproc = tmp / "prom-multiproc"
        multiproc.mkdir()
        email = {"host": "127.0.0.1", "port": free_port(), "timeout": 2,  # nothing listens
                 "sender": "telemetry-guard@example.com", "recipients": ["oncall@example.com"],
                 "retry_max_retries": 0}
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith(("TELEMETRY_GUARD_", "SENTRY_"))}
        env = dict(inherited, TG_TEST_BROKER=broker, PYTHONPATH=str(ROOT),
                   PROMETHEUS_MULTIPROC_DIR=str(multiproc),
                   TELEMETRY_GUARD_METRICS_PORT=str(port),
                   TELEMETRY_GUARD_METRICS_ADDRESS="127.0.0.1",
                   TELEMETRY_GUARD_EMAIL=json.dumps(email))
        self.log_path = tmp / "worker.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.apps.e2e_app", "worker",
             "-P", "prefork", "-c", "2", "-Q", f"{QUEUE},{NOTIFICATION_QUEUE}", "-l", "WARNING",
             "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_serving(self, timeout: float) -> None:
        def serving() -> bool:
            assert self.proc.poll() is None, f"worker exited:\n{self.log_text()}"
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


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[tuple[E2EWorker, Prometheus]]:
    """A prefork worker and a Prometheus scraping it, started side by side."""
    worker_port = free_port()
    prometheus = Prometheus(tmp_path, worker_port)
    worker = E2EWorker(redis_url, tmp_path, worker_port)
    try:
        prometheus.wait_ready(timeout=30)
        worker.wait_serving(timeout=30)
        yield worker, prometheus
    finally:
        worker.stop()
        prometheus.stop()


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    app = Celery("e2e_producer", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.task_default_queue = QUEUE
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


#: What Prometheus must have scraped after a round of the workload (the notification,
#: sent by the notification task after the critical failure, comes last).
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


def scraped(prometheus: Prometheus, rounds: int) -> bool:
    """Whether Prometheus holds the counts of ``rounds`` rounds of the workload."""
    return (all(prometheus.query(selector) for selector in ROUND_SELECTORS)
            and bool(prometheus.query(
                f'sum(telemetry_guard_notifications_total{{outcome="failed"}}) >= {rounds}'))
            and bool(prometheus.query(
                f'sum(telemetry_guard_breaker_transitions_total{{to_state="open"}}) >= {rounds}'))
            and bool(prometheus.query(
                f'sum(telemetry_guard_task_runtime_seconds_count{{task="e2e.ok"}}) '
                f'>= {5 * rounds}')))


def shows_activity(result: list[Any]) -> bool:
    """Whether a query result has a series whose current value is a number other than 0."""
    for series in result:
        value = series.get("value", [None, "NaN"])[1]
        if value not in ("NaN", "+Inf", "-Inf") and float(value) != 0:
            return True
    return False


def test_dashboards_show_the_workload_and_alerts_fire_on_a_real_prometheus(
        stack: tuple[E2EWorker, Prometheus], producer: Celery, redis_url: str) -> None:
    """Every panel shows the workload, every rule evaluates, breaker and critical alerts fire."""
    worker, prometheus = stack
    started = time.monotonic()
    try:
        wait_for(lambda: prometheus.query('up{job="telemetry_guard_worker"} == 1'), timeout=15)
    except AssertionError:
        pytest.fail(f"the worker is not scraped: {prometheus.api('targets')['activeTargets']}")

    # The rule copies loaded, with the shortened `for:`.
    alerting = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]
                if r["type"] == "alerting"]
    assert prometheus.shortened > 0
    assert {r["name"] for r in alerting} >= set(ALERTS_THAT_MUST_FIRE)
    assert all(r["duration"] <= 1 for r in alerting), [(r["name"], r["duration"])
                                                        for r in alerting]

    # A labelled counter is born at its first increment, and rate() / increase() cannot see
    # that step: a second round, after Prometheus saw the first, gives the panels real rates.
    run_round(producer, worker)
    wait_for(lambda: scraped(prometheus, 1), timeout=20, interval=0.25)
    reset = RedisBreakerStore(BREAKER, BreakerConfig(failure_threshold=2, reset_timeout=3600.0),
                              redis_url=redis_url).reset()  # as `telemetry-guard breakers reset`
    assert [(t.from_state, t.to_state) for t in reset] == [("open", "closed")]
    run_round(producer, worker)
    wait_for(lambda: scraped(prometheus, 2), timeout=20, interval=0.25)

    queries = [(uid, title, substitute_variables(expr)) for uid, title, expr in all_queries()]
    panels = {(uid, title) for uid, title, _ in queries}
    assert set(NO_ACTIVITY_EXPECTED) <= panels, \
        "NO_ACTIVITY_EXPECTED names a panel that no longer exists"

    def quiet_panels() -> list[str]:
        quiet = []
        for uid, title, expr in queries:
            result = prometheus.query(expr)  # an evaluation error fails at once
            if not result:
                quiet.append(f"no data: {uid} / {title}: {expr}")
            elif not shows_activity(result) and (uid, title) not in NO_ACTIVITY_EXPECTED:
                quiet.append(f"only 0 or NaN: {uid} / {title}: {expr} -> {result}")
        return quiet

    try:
        wait_for(lambda: not quiet_panels(), timeout=20, interval=0.5)
    except AssertionError:
        pytest.fail("dashboard panels that do not show the workload:\n"
                    + "\n".join(quiet_panels()) + f"\n--- worker log ---\n{worker.log_text()}")

    def firing() -> set[str]:
        return {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]
                if a["state"] == "firing"}

    try:
        wait_for(lambda: firing() >= set(ALERTS_THAT_MUST_FIRE), timeout=20, interval=0.5)
    except AssertionError:
        pytest.fail(f"alerts firing: {sorted(firing())}; wanted {ALERTS_THAT_MUST_FIRE}")
    alerts = prometheus.api("alerts")["alerts"]
    assert {a["labels"].get("breaker") for a in alerts
            if a["labels"]["alertname"] == "TelemetryGuardBreakerOpen"} == {BREAKER}
    assert {a["labels"].get("task") for a in alerts
            if a["labels"]["alertname"] == "TelemetryGuardCriticalFailure"} == {"e2e.ledger"}

    broken = [(r["name"], r.get("lastError")) for g in prometheus.api("rules")["groups"]
              for r in g["rules"] if r.get("health") == "err"]
    assert not broken, broken
    assert time.monotonic() - started < 80
