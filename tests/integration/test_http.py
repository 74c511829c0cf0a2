"""resilient_request under a real worker, against a scripted local HTTP server and private Redis."""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from telemetry_guard import RetryPolicy, Severity, TelemetryGuard
from telemetry_guard.breaker import get_breaker
from telemetry_guard.core.events import BreakerChange, FailureEvent
from telemetry_guard.http import (
    HTTPClientError,
    HTTPConnectionError,
    HTTPStatusError,
    HTTPTimeoutError,
    ResilientRequestTask,
    TransientHTTPError,
    breaker_name,
    cache_key,
    parse_retry_after,
    register_resilient_request,
    resilient_request_task,
    safe_url,
    status_error,
)
from telemetry_guard.testing import capture_events
from tests.http_server import Reply, ScriptedHTTPServer
from tests.servers import free_port

RETRY_ON = (TransientHTTPError, ConnectionError, TimeoutError)
FAST = RetryPolicy(max_retries=3, base_delay=0.05, max_delay=3.0, retry_on=RETRY_ON)
ONE_RETRY = RetryPolicy(max_retries=1, base_delay=0.05, max_delay=0.1, retry_on=RETRY_ON)
LENIENT = {"failure_threshold": 20, "reset_timeout": 1.0}
CANARIES = ("canary-xyz", "pw-canary", "tok-canary")

_used_ports: set[int] = set()


def _fresh_server() -> ScriptedHTTPServer:
    """A server on a port no earlier test used, so its host breaker is new to the registry."""
    while True:
        server = ScriptedHTTPServer()
        if server.port not in _used_ports:
            _used_ports.add(server.port)
            return server.start()
        server.httpd.server_close()


@pytest.fixture
def server() -> Iterator[ScriptedHTTPServer]:
    """A scripted HTTP server on 127.0.0.1 for this test."""
    s = _fresh_server()
    yield s
    s.stop()


@pytest.fixture
def guard(celery_app: Celery) -> TelemetryGuard:
    """A guard on the test app (its Redis is the private server)."""
    return TelemetryGuard(celery_app)


def worker(app: Celery) -> Any:
    """An in-process solo worker consuming the app's queue."""
    return start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING",
                        shutdown_timeout=10)


def sample(name: str, **labels: str) -> float:
    """A metric's current value in this process (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def failures(events: list[Any]) -> list[FailureEvent]:
    return [e for e in events if isinstance(e, FailureEvent)]


def test_two_server_errors_then_success_are_two_retries(
        celery_app: Celery, guard: TelemetryGuard, server: ScriptedHTTPServer) -> None:
    """500, 500, 200: the task succeeds after two scheduled retries, hitting the server 3 times."""
    task = register_resilient_request(celery_app, name="http.flaky", retry_policy=FAST,
                                      breaker_defaults=LENIENT)
    server.script("/flaky", Reply(500), Reply(500), Reply(200, {"ok": True}))
    with capture_logs() as logs, capture_events() as events, worker(celery_app):
        result = task.delay("GET", server.url("/flaky")).get(timeout=20)

    assert result == {"status": "ok", "status_code": 200, "data": {"ok": True}, "cached_at": None}
    scheduled = [e for e in logs if e["event"] == "task.retry_scheduled"]
    assert [e["attempt"] for e in scheduled] == [1, 2]
    assert not [e for e in logs if e["event"] == "task.gave_up"]
    assert [(e.exception_type, e.decision) for e in failures(events)] == [
        ("TransientHTTPError", "retry")] * 2
    assert failures(events)[0].message == f"HTTP 500 from {server.url('/flaky')}"
    assert len(server.hits("/flaky")) == 3


def test_not_found_gives_up_once_at_low_without_retry(
        celery_app: Celery, guard: TelemetryGuard, server: ScriptedHTTPServer) -> None:
    """404: one give-up at LOW naming the status, no retry, no fallback, the server hit once."""
    task = register_resilient_request(celery_app, name="http.missing", retry_policy=FAST,
                                      breaker_defaults=LENIENT)
    server.script("/missing", Reply(404, {"error": "no such thing"}))
    with capture_logs() as logs, capture_events() as events, worker(celery_app):
        with pytest.raises(HTTPClientError) as raised:
            task.delay("GET", server.url("/missing")).get(timeout=20)

    assert raised.value.status == 404 and raised.value.url == server.url("/missing")
    gave_up = failures(events)
    assert [(e.decision, e.severity, e.reason) for e in gave_up] == [
        ("give_up", Severity.LOW, "not_retryable")]
    assert gave_up[0].message == f"HTTP 404 from {server.url('/missing')}"
    assert not [e for e in logs if e["event"] == "task.retry_scheduled"]
    assert len(server.hits("/missing")) == 1
    name = breaker_name(server.url("/"))
    breaker = get_breaker(name)
    assert breaker is not None and breaker.state == "closed"
    # A 4xx is the caller's fault, not the host's: a success for the breaker.
    assert sample("telemetry_guard_breaker_calls_total", breaker=name, outcome="success") == 1
    assert sample("telemetry_guard_breaker_calls_total", breaker=name, outcome="failure") == 0


def test_too_many_requests_waits_at_least_retry_after(
        celery_app: Celery, guard: TelemetryGuard, server: ScriptedHTTPServer) -> None:
    """429 with Retry-After: 2 makes the retry countdown >= 2 s, and the server sees the gap."""
    task = register_resilient_request(celery_app, name="http.busy", retry_policy=FAST,
                                      breaker_defaults=LENIENT)
    server.script("/busy", Reply(429, headers={"Retry-After": "2"}), Reply(200, {"n": 1}))
    with capture_logs() as logs, worker(celery_app):
        result = task.delay("GET", server.url("/busy")).get(timeout=20)

    assert result["status"] == "ok" and result["data"] == {"n": 1}
    scheduled = [e for e in logs if e["event"] == "task.retry_scheduled"]
    assert len(scheduled) == 1 and scheduled[0]["delay_s"] >= 2.0
    hits = server.hits("/busy")
    assert len(hits) == 2 and hits[1].at - hits[0].at >= 2.0


def test_breaker_opens_rejects_without_calling_then_one_trial_closes_it(
        celery_app: Celery, guard: TelemetryGuard, server: ScriptedHTTPServer) -> None:
    """Two 503s open the host's breaker; rejected calls fall back unsent; one trial closes it."""
    task = register_resilient_request(
        celery_app, name="http.down", retry_policy=FAST,
        breaker_defaults={"failure_threshold": 2, "reset_timeout": 1.0})
    server.script("/down", Reply(503))
    fallback = {"status": "fallback", "data": None, "cached_at": None}
    with capture_events() as events, worker(celery_app):
        assert task.delay("GET", server.url("/down")).get(timeout=20) == fallback
        assert len(server.hits("/down")) == 2  # the third attempt was rejected
        breaker = get_breaker(f"http:127.0.0.1:{server.port}")
        assert breaker is not None and breaker.state == "open"

        assert task.delay("GET", server.url("/down")).get(timeout=20) == fallback
        assert len(server.hits("/down")) == 2

        server.script("/down", Reply(200, {"back": True}))
        time.sleep(breaker.retry_after() + 0.1)
        result = task.delay("GET", server.url("/down")).get(timeout=20)
        assert result["status"] == "ok" and result["data"] == {"back": True}
        assert len(server.hits("/down")) == 3
        assert breaker.state == "closed"

    changes = [(e.from_state, e.to_state) for e in events if isinstance(e, BreakerChange)]
    assert changes[0] == ("closed", "open") and changes[-1] == ("half_open", "closed")


def test_fallback_returns_the_cached_body_when_the_server_stays_down(
        celery_app: Celery, guard: TelemetryGuard, server: ScriptedHTTPServer,
        redis_url: str) -> None:
    """A cached 200 JSON body is what the task returns once retries against 503s run out."""
    task = register_resilient_request(celery_app, name="http.quote", retry_policy=ONE_RETRY,
                                      cache_ttl=30.0, breaker_defaults=LENIENT)
    server.script("/quote", Reply(200, {"price": 10}), Reply(503))
    url = server.url("/quote")
    with capture_events() as events, worker(celery_app):
        first = task.delay("GET", url, params={"sku": "A-1"}).get(timeout=20)
        assert first["status"] == "ok" and first["data"] == {"price": 10}
        second = task.delay("GET", url, params={"sku": "A-1"}).get(timeout=20)
        other = task.delay("GET", url, params={"sku": "B-2"}).get(timeout=20)

    client = redis.Redis.from_url(redis_url)
    key = cache_key(guard.settings.key_prefix, "GET", url, {"sku": "A-1"})
    assert key.startswith("telemetry_guard:http_cache:")
    stored = json.loads(client.get(key))
    assert stored["body"] == {"price": 10}
    assert 0 < client.pttl(key) <= 30_000
    cached_at = datetime.fromisoformat(stored["cached_at"].replace("Z", "+00:00"))
    assert cached_at.tzinfo is not None
    assert abs(datetime.now(timezone.utc) - cached_at) < timedelta(seconds=30)
    assert second == {"status": "fallback", "data": {"price": 10}, "cached_at": stored["cached_at"]}
    assert other == {"status": "fallback", "data": None, "cached_at": None}
    assert len(server.hits("/quote")) == 1 + 2 + 2
    gave_up = [e for e in failures(events) if e.decision == "give_up"]
    assert [(e.reason, e.severity) for e in gave_up] == [
        ("max_retries_exceeded", Severity.HIGH)] * 2


def test_credentials_never_reach_the_error_log_or_the_logs(
        celery_app: Celery, guard: TelemetryGuard, server: ScriptedHTTPServer,
        redis_url: str) -> None:
    """Authorization headers, URL userinfo and query tokens are sent but never reported."""
    task = register_resilient_request(celery_app, name="http.private", retry_policy=ONE_RETRY,
                                      breaker_defaults=LENIENT)
    server.script("/private", Reply(503))
    url = f"http://user:pw-canary@127.0.0.1:{server.port}/private?token=tok-canary&page=2"
    with capture_logs() as logs, capture_events() as events, worker(celery_app):
        result = task.delay("GET", url, headers={"Authorization": "Bearer canary-xyz"}).get(
            timeout=20)
        guard.flush()

    assert result == {"status": "fallback", "data": None, "cached_at": None}
    hits = server.hits("/private")
    assert len(hits) == 2
    assert hits[0].headers["Authorization"] == "Bearer canary-xyz"
    assert hits[0].query == "token=tok-canary&page=2"
    logged = json.dumps(logs, default=str)
    entries = redis.Redis.from_url(redis_url).xrange("telemetry_guard:errors")
    stored = " ".join(e[1][b"record"].decode() for e in entries)
    assert len(entries) == 2 and len(logs) >= 4
    for canary in CANARIES:
        assert canary not in logged and canary not in stored
    shown = f"http://127.0.0.1:{server.port}/private"
    assert {e.message for e in failures(events)} == {f"HTTP 503 from {shown}"}
    record = json.loads(entries[0][1][b"record"])
    assert record["kwargs"]["headers"]["Authorization"] == "[REDACTED]"
    assert "[REDACTED]" in record["args"][1]


def test_userinfo_becomes_basic_auth_and_cross_origin_redirects_drop_credentials(
        celery_app: Celery, guard: TelemetryGuard, server: ScriptedHTTPServer) -> None:
    """user:pw@ is sent as Basic auth; a redirect to another origin goes without credentials."""
    task = register_resilient_request(celery_app, name="http.auth", retry_policy=FAST,
                                      breaker_defaults=LENIENT)
    other = _fresh_server()
    try:
        other.script("/land", Reply(200, {"landed": True}))
        server.script("/me", Reply(200, {"me": 1}))
        server.script("/hop", Reply(302, "", headers={"Location": other.url("/land")}))
        with worker(celery_app):
            me = task.delay("GET", f"http://ann:s%40fe@127.0.0.1:{server.port}/me").get(
                timeout=20)
            hop = task.delay("GET", server.url("/hop"),
                             headers={"Authorization": "Bearer canary-xyz"}).get(timeout=20)
        landed = other.hits("/land")
    finally:
        other.stop()
    assert me["data"] == {"me": 1} and hop["data"] == {"landed": True}
    assert server.hits("/me")[0].headers["Authorization"] == "Basic YW5uOnNAZmU="  # ann:s@fe
    assert server.hits("/hop")[0].headers["Authorization"] == "Bearer canary-xyz"
    assert len(landed) == 1 and "Authorization" not in landed[0].headers


def test_connection_errors_and_timeouts_are_retried_then_fall_back(
        celery_app: Celery, guard: TelemetryGuard, server: ScriptedHTTPServer) -> None:
    """A refused connection and a slow answer are retried (MEDIUM), then the fallback answers."""
    task = register_resilient_request(celery_app, name="http.unreachable",
                                      retry_policy=ONE_RETRY, breaker_defaults=LENIENT)
    server.script("/slow", Reply(200, {"late": True}, delay=1.0))
    closed = f"http://127.0.0.1:{free_port()}/nothing"
    fallback = {"status": "fallback", "data": None, "cached_at": None}
    with capture_events() as events, worker(celery_app):
        assert task.delay("GET", closed).get(timeout=20) == fallback
        assert task.delay("GET", server.url("/slow"), timeout=0.2).get(timeout=20) == fallback
    seen = [(e.exception_type, e.decision, e.severity) for e in failures(events)]
    assert seen == [
        ("HTTPConnectionError", "retry", Severity.MEDIUM),
        ("HTTPConnectionError", "give_up", Severity.HIGH),
        ("HTTPTimeoutError", "retry", Severity.MEDIUM),
        ("HTTPTimeoutError", "give_up", Severity.HIGH),
    ]
    assert failures(events)[0].message.startswith(f"cannot reach {closed}: ")
    assert failures(events)[2].message == f"no answer from {server.url('/slow')} within 0.2s"
    assert len(server.hits("/slow")) == 2


def test_progress_names_the_attempt_and_the_url_without_query(
        celery_app: Celery, guard: TelemetryGuard, server: ScriptedHTTPServer) -> None:
    """While the request is in flight the task's state is PROGRESS with attempt and bare URL."""
    task = register_resilient_request(celery_app, name="http.slowok", retry_policy=FAST,
                                      breaker_defaults=LENIENT)
    server.script("/report", Reply(200, "plain text", delay=1.0))
    with worker(celery_app):
        pending = task.delay("POST", server.url("/report") + "?token=tok-canary", json={"a": 1})
        deadline = time.monotonic() + 5
        while pending.state != "PROGRESS" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pending.state == "PROGRESS"
        assert pending.info == {"attempt": 1, "url": server.url("/report")}
        result = pending.get(timeout=20)
    assert result == {"status": "ok", "status_code": 200, "data": "plain text", "cached_at": None}
    hit = server.hits("/report")[0]
    assert hit.method == "POST" and json.loads(hit.body) == {"a": 1}
    assert hit.headers["Content-Type"] == "application/json"


def test_urls_that_are_not_http_are_refused_without_fallback(celery_app: Celery) -> None:
    """file: and other schemes are a ValueError given up at once (eager run, no worker)."""
    TelemetryGuard(celery_app)
    task = register_resilient_request(celery_app, name="http.eager", retry_policy=FAST)
    with capture_events() as events:
        outcome = task.apply(args=("GET", "file:///etc/passwd"))
    assert isinstance(outcome.result, ValueError)
    assert [(e.exception_type, e.reason) for e in failures(events)] == [
        ("ValueError", "not_retryable")]


def test_registering_again_updates_the_one_task_and_the_default_accessor_keeps_it(
        celery_app: Celery) -> None:
    """register_resilient_request returns the same task; the latest options win."""
    first = register_resilient_request(celery_app)
    assert resilient_request_task(celery_app) is first
    policy = RetryPolicy(max_retries=1)
    second = register_resilient_request(celery_app, retry_policy=policy, cache_ttl=5.0,
                                        breaker_defaults={"failure_threshold": 2})
    assert second is first and isinstance(second, ResilientRequestTask)
    assert second.name == "telemetry_guard.resilient_request"
    assert (second.retry_policy, second.cache_ttl) == (policy, 5.0)
    assert resilient_request_task(celery_app).retry_policy is policy
    assert celery_app.tasks["telemetry_guard.resilient_request"] is second


def test_the_task_is_registered_only_when_asked_for(celery_app: Celery) -> None:
    """A guard alone registers no HTTP task; register_resilient_request opts the app in."""
    guard = TelemetryGuard(celery_app)
    celery_app.finalize()
    assert "telemetry_guard.resilient_request" not in celery_app.tasks
    with pytest.raises(LookupError, match="register_resilient_request"):
        guard.resilient_request  # noqa: B018
    task = register_resilient_request(celery_app)
    assert guard.resilient_request is task


def test_the_shared_client_keeps_no_cookies_between_requests(
        celery_app: Celery, guard: TelemetryGuard, server: ScriptedHTTPServer) -> None:
    """A Set-Cookie answer is not sent back: one caller's cookies never reach another's call."""
    task = register_resilient_request(celery_app, name="http.cookies", retry_policy=FAST)
    server.script("/login", Reply(200, {"in": True}, headers={"Set-Cookie": "sid=s3cret; Path=/"}))
    server.script("/next", Reply(200, {"n": 1}))
    task.apply(args=("GET", server.url("/login"))).get()
    task.apply(args=("GET", server.url("/next"))).get()
    assert "Cookie" not in server.hits("/next")[0].headers


def test_errors_carry_status_and_bare_url_and_survive_pickle_and_json() -> None:
    """Status errors rebuild from pickle and from their args (Celery's JSON result backend)."""
    errors: list[BaseException] = [
        status_error(503, "https://api.example/x", 2.5), status_error(404, "https://a/b"),
        status_error(429, "https://a/b"), HTTPConnectionError("https://a/b", "refused"),
        HTTPTimeoutError("https://a/b", 3.0)]
    assert [type(e) for e in errors] == [TransientHTTPError, HTTPClientError, TransientHTTPError,
                                         HTTPConnectionError, HTTPTimeoutError]
    for exc in errors:
        again = pickle.loads(pickle.dumps(exc))
        rebuilt = type(exc)(*json.loads(json.dumps(exc.args)))
        assert str(again) == str(rebuilt) == str(exc)
    assert str(errors[0]) == "HTTP 503 from https://api.example/x (retry after 2.5s)"
    assert isinstance(errors[0], HTTPStatusError) and errors[0].retry_after == 2.5
    assert FAST.should_retry(errors[0]) and not FAST.should_retry(errors[1])
    assert all(FAST.should_retry(e) for e in errors[2:])


def test_retry_after_accepts_seconds_and_http_dates_and_ignores_nonsense() -> None:
    """Retry-After is delay-seconds or an HTTP date; anything else is ignored."""
    now = time.time()
    later = format_datetime(datetime.fromtimestamp(now + 30, timezone.utc), usegmt=True)
    assert parse_retry_after("2") == 2.0
    assert 28 <= (parse_retry_after(later, now=now) or 0) <= 31
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0
    for bad in (None, "", "soon", "-5", "nan", "inf"):
        assert parse_retry_after(bad) is None


def test_safe_url_and_cache_key_hide_and_separate_credentials() -> None:
    """Shown URLs lose userinfo, query and fragment; cache keys differ per credential."""
    assert safe_url("https://u:p@Host.example:8443/a/b?token=t#frag") == (
        "https://host.example:8443/a/b")
    assert safe_url("http://[::1]:80/x?y") == "http://[::1]:80/x"
    assert breaker_name("https://u:p@API.example/x") == "http:api.example"
    assert breaker_name("http://127.0.0.1:8080/x") == "http:127.0.0.1:8080"
    plain = cache_key("p:", "get", "https://a/b", {"q": 1})
    assert plain == cache_key("p:", "GET", "https://a/b", {"q": 1}, headers={"Accept": "x"})
    assert plain != cache_key("p:", "GET", "https://a/b", {"q": 2})
    assert cache_key("p:", "GET", "https://a/b", None, None, {"Authorization": "Bearer 1"}) != (
        cache_key("p:", "GET", "https://a/b", None, None, {"Authorization": "Bearer 2"}))
