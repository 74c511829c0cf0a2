"""E-mail notifications end to end: real worker, real Redis, real SMTP server (aiosmtpd)."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from telemetry_guard import GuardedTask, TelemetryGuard
from telemetry_guard.notify import NOTIFY_TASK_NAME, fingerprint_hash
from tests.servers import free_port, wait_for
from tests.smtp_server import CapturedMail, CapturingSMTPServer

#: Notification retries fast enough for tests (full jitter below 0.5 s).
FAST_RETRIES = {"retry_base_delay": 0.1, "retry_max_delay": 0.5, "retry_max_retries": 50}
FIELD = re.compile(r"^(?P<label>[A-Z][\w ]*):\s+(?P<value>.*)$", re.M)


def notifications(outcome: str, severity: str = "critical") -> float:
    """telemetry_guard_notifications_total for the email channel (0 when absent)."""
    return REGISTRY.get_sample_value(
        "telemetry_guard_notifications_total",
        {"channel": "email", "severity": severity, "outcome": outcome}) or 0.0


def fields(mail: CapturedMail) -> dict[str, str]:
    """The ``Label: value`` lines of a notification body."""
    return {m["label"]: m["value"] for m in FIELD.finditer(mail.body)}


@pytest.fixture
def smtp() -> Iterator[CapturingSMTPServer]:
    """A capturing SMTP server on a free port, running for the test."""
    with CapturingSMTPServer() as server:
        yield server


def worker(app: Celery, *queues: str) -> Any:
    """An in-process solo worker consuming ``queues`` in that order of preference."""
    return start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING",
                        shutdown_timeout=10, queues=list(queues))


def guarded(app: Celery, email: dict[str, Any], *, throttle: float = 600.0,
            queue_order: str = "priority") -> TelemetryGuard:
    """A guard mailing through ``email``; the worker prefers queues in the order given."""
    app.conf.broker_transport_options = {"queue_order_strategy": queue_order}
    app.conf.worker_prefetch_multiplier = 1
    return TelemetryGuard(app, email=email, notification_throttle=throttle)


def critical_task(app: Celery, name: str) -> Any:
    """A CRITICAL task that always raises ValueError (not retryable: gives up at once)."""

    @app.task(bind=True, base=GuardedTask, name=name, severity="critical", shared=False)
    def fail(self: Any, order_id: int = 0, password: str = "", api_key: str = "",
             note: str = "") -> None:
        raise ValueError(f"ledger mismatch for order {order_id} (password={password}){note}")

    return fail


def test_critical_failure_is_mailed_with_every_field_and_no_secret(
        celery_app: Celery, smtp: CapturingSMTPServer) -> None:
    """A CRITICAL failure on a worker: one mail, exact subject, all fields, no kwargs secret."""
    guard = guarded(celery_app, smtp.settings())
    ledger = critical_task(celery_app, "t.ledger")
    sent = notifications("sent")
    with capture_logs() as logs, worker(celery_app, "tests", guard.settings.notification_queue):
        result = ledger.apply_async(args=(7,),
                                    kwargs={"password": "canary-pw", "api_key": "canary-key"})
        with pytest.raises(ValueError):
            result.get(timeout=20)
        [mail] = smtp.wait_for(1)
        wait_for(lambda: notifications("sent") - sent == 1)

    message = mail.message
    assert message["Subject"] == "[CRITICAL] t.ledger: ValueError"
    assert mail.rcpt_tos == ["ops@example.com"] and message["To"] == "ops@example.com"
    assert mail.mail_from == "guard@example.com"
    body = fields(mail)
    assert body["Task"] == "t.ledger" and body["Task id"] == result.id
    assert body["Exception"].startswith("ValueError: ledger mismatch for order 7")
    assert body["Severity"] == "critical" and body["Attempt"] == "1"
    sent_at = dt.datetime.fromisoformat(body["Time"])
    assert sent_at.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.timezone.utc) - sent_at).total_seconds()) < 60
    assert body["Host"] not in ("", "-")
    assert "Traceback (most recent call last)" in mail.body
    assert "ValueError: ledger mismatch for order 7" in mail.body
    for secret in ("canary-pw", "canary-key"):
        assert secret not in mail.raw.decode("utf-8", "replace") and secret not in mail.body
    [event] = [e for e in logs if e["event"] == "notification.sent"]
    assert event["channel"] == "email" and event["task_name"] == "t.ledger"
    assert event["severity"] == "critical" and event["recipients"] == 1


def test_identical_failures_in_the_window_send_one_mail_and_report_the_suppressed(
        celery_app: Celery, smtp: CapturingSMTPServer, redis_url: str) -> None:
    """100 failures of one fingerprint → 1 mail (a 2nd fingerprint → its own); next says 99."""
    guard = guarded(celery_app, smtp.settings(), throttle=2.0)
    flood, other = critical_task(celery_app, "t.flood"), critical_task(celery_app, "t.other")
    before = {outcome: notifications(outcome) for outcome in ("sent", "throttled")}
    client = redis.Redis.from_url(redis_url)
    flood_hash = fingerprint_hash({"fingerprint": ["t.flood", "ValueError"]}, "critical",
                                  ["ops@example.com"])
    # Failures queued before the worker starts; the worker drains the task queue first, so
    # all 101 notifications then run back to back, well inside the 2 s window.
    results = [flood.delay(i) for i in range(100)] + [other.delay(100)]
    with capture_logs() as logs, worker(celery_app, "tests", guard.settings.notification_queue):
        for result in results:
            with pytest.raises(ValueError):
                result.get(timeout=30)
        wait_for(lambda: sum(notifications(o) - before[o] for o in before) == 101, timeout=20)
        assert notifications("sent") - before["sent"] == 2
        assert notifications("throttled") - before["throttled"] == 99
        assert sorted(m.message["Subject"] for m in smtp.messages) == [
            "[CRITICAL] t.flood: ValueError", "[CRITICAL] t.other: ValueError"]
        assert int(client.get(f"telemetry_guard:notify:suppressed:{flood_hash}") or 0) == 99
        assert all("Suppressed" not in fields(m) for m in smtp.messages)

        wait_for(lambda: not client.exists(f"telemetry_guard:notify:throttle:{flood_hash}"),
                 timeout=5)
        with pytest.raises(ValueError):
            flood.delay(101).get(timeout=20)
        mails = smtp.wait_for(3)
        wait_for(lambda: notifications("sent") - before["sent"] == 3)

    assert len(mails) == 3 and mails[2].message["Subject"] == "[CRITICAL] t.flood: ValueError"
    assert fields(mails[2])["Suppressed"] == "99 since the last mail"
    assert not client.exists(f"telemetry_guard:notify:suppressed:{flood_hash}")
    throttled = [e for e in logs if e["event"] == "notification.throttled"]
    assert len(throttled) == 99 and {e["task_name"] for e in throttled} == {"t.flood"}
    assert throttled[-1]["suppressed"] == 99 and throttled[0]["channel"] == "email"


def test_mail_sent_exactly_once_when_the_smtp_server_comes_back(celery_app: Celery) -> None:
    """SMTP down when the failure happens, up 5 s later on that port: one mail, by a retry."""
    smtp = CapturingSMTPServer(free_port())
    guard = guarded(celery_app, smtp.settings(**FAST_RETRIES))
    fail = critical_task(celery_app, "t.smtp_down")
    failed = notifications("failed")
    try:
        with capture_logs() as logs, worker(celery_app, "tests",
                                            guard.settings.notification_queue):
            with pytest.raises(ValueError):
                fail.delay(1).get(timeout=20)
            time.sleep(5)
            assert smtp.messages == []
            smtp.start()
            smtp.wait_for(1, timeout=10)
            time.sleep(1.0)  # longer than any retry delay: a second mail would be here by now
    finally:
        smtp.stop()
    assert len(smtp.messages) == 1
    assert smtp.messages[0].message["Subject"] == "[CRITICAL] t.smtp_down: ValueError"
    events = [e["event"] for e in logs if e["event"].startswith("notification.")]
    assert events.count("notification.sent") == 1 and "notification.failed" not in events
    retries = [e for e in logs if e["event"] == "notification.retry_scheduled"]
    assert retries and {e["error"] for e in retries} == {"ConnectionRefusedError"}
    assert notifications("failed") == failed


@pytest.mark.parametrize("queue_order", ["priority", "round_robin"])
def test_notification_overtakes_a_backlog_of_a_thousand_tasks(
        celery_app: Celery, smtp: CapturingSMTPServer, redis_url: str, queue_order: str) -> None:
    """1,000 ordinary tasks queued behind a CRITICAL failure: its mail goes out before them."""
    guard = guarded(celery_app, smtp.settings(), queue_order=queue_order)
    client = redis.Redis.from_url(redis_url)
    ran_when_mailed: list[int] = []
    smtp.on_receive = lambda mail: ran_when_mailed.append(int(client.llen("ran")))
    fail = critical_task(celery_app, "t.urgent")

    @celery_app.task(name="t.ordinary", ignore_result=True, shared=False)
    def ordinary(index: int) -> None:
        client.rpush("ran", index)

    fail.delay(0)
    with celery_app.producer_or_acquire() as producer:
        for i in range(1000):
            ordinary.apply_async((i,), producer=producer)
    with worker(celery_app, guard.settings.notification_queue, "tests"):
        smtp.wait_for(1, timeout=20)
    assert ran_when_mailed[0] < 100, ran_when_mailed
    assert client.llen("ran") < 1000  # the worker stopped with most of the backlog untouched


def test_header_injection_in_task_name_and_message_adds_no_header_or_recipient(
        celery_app: Celery, smtp: CapturingSMTPServer) -> None:
    """A task name and message carrying CRLF + Bcc: no Bcc header, only configured recipients."""
    guard = guarded(celery_app, smtp.settings())
    evil = critical_task(celery_app, "t.inject\r\nBcc: x@evil")
    with worker(celery_app, "tests", guard.settings.notification_queue):
        with pytest.raises(ValueError):
            evil.delay(1, note="\r\nBcc: y@evil\r\n\r\nforged body").get(timeout=20)
        [mail] = smtp.wait_for(1)
    message = mail.message
    assert message.get_all("Bcc") is None and message.get_all("Cc") is None
    assert mail.rcpt_tos == ["ops@example.com"] and message["To"] == "ops@example.com"
    assert message["Subject"] == "[CRITICAL] t.inject Bcc: x@evil: ValueError"
    headers = mail.raw.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"^(bcc|cc):", headers, re.I | re.M)
    assert sorted(set(message.keys())) == sorted({
        "Subject", "From", "To", "Date", "Message-ID", "Auto-Submitted",
        "X-Telemetry-Guard-Severity", "Content-Type", "Content-Transfer-Encoding",
        "MIME-Version"})


def test_smtp_errors_past_the_last_retry_are_dead_lettered_without_leaking_the_password(
        celery_app: Celery, redis_url: str) -> None:
    """Rejected SMTP login on every try: notification.failed, counted, replayable dead letter."""
    with CapturingSMTPServer(credentials=("mailer", "right-pw")) as smtp:
        guard = guarded(celery_app, smtp.settings(
            user="mailer", password="smtp-canary-pw", retry_base_delay=0.05,
            retry_max_delay=0.1, retry_max_retries=2))
        fail = critical_task(celery_app, "t.auth")
        failed = notifications("failed")
        with capture_logs() as logs, worker(celery_app, "tests",
                                            guard.settings.notification_queue):
            with pytest.raises(ValueError):
                fail.delay(1).get(timeout=20)
            wait_for(lambda: notifications("failed") - failed == 1, timeout=20)
    assert smtp.messages == []
    [event] = [e for e in logs if e["event"] == "notification.failed"]
    assert event["channel"] == "email" and event["error"] == "SMTPAuthenticationError"
    assert event["deliveries"] == 3 and event["dead_lettered"] is True
    assert "smtp-canary-pw" not in repr(logs)
    guard.flush()
    dead = redis.Redis.from_url(redis_url).xrange("telemetry_guard:dead")
    [entry] = [e for _, e in dead if json.loads(e[b"replay"])["task"] == NOTIFY_TASK_NAME]
    record = json.loads(entry[b"record"])
    replay = json.loads(entry[b"replay"])
    assert record["task_name"] == "t.auth" and record["severity"] == "critical"
    assert replay == {"task": NOTIFY_TASK_NAME, "args": [record], "kwargs": {}}
    assert b"smtp-canary-pw" not in entry[b"record"] + entry[b"replay"]


def test_a_redelivered_notification_still_sends_but_a_new_occurrence_is_throttled(
        celery_app: Celery, smtp: CapturingSMTPServer) -> None:
    """Same message again (worker lost mid-send, acks_late): it owns its slot and sends."""
    guard = guarded(celery_app, smtp.settings())
    payload = {"task_name": "t.redelivered", "task_id": "f-1", "exception_type": "KeyError",
               "message": "m", "severity": "critical", "time": "2024-01-01T00:00:00+00:00",
               "attempt": 1, "hostname": "h", "trace_id": None, "traceback": "tb",
               "fingerprint": ["t.redelivered", "KeyError"]}
    task = guard.notify_task
    outcomes = [task.apply(args=(payload,), task_id=task_id).get()
                for task_id in ("n-1", "n-1", "n-2")]
    assert outcomes == ["sent", "sent", "throttled"]
    assert len(smtp.wait_for(2)) == 2


def telemetry_errors(sink: str) -> float:
    """telemetry_guard_telemetry_errors_total for ``sink`` (0 when absent)."""
    return REGISTRY.get_sample_value("telemetry_guard_telemetry_errors_total",
                                     {"sink": sink}) or 0.0


def test_critical_mail_goes_out_unthrottled_when_the_guards_redis_is_down(
        celery_app: Celery, smtp: CapturingSMTPServer) -> None:
    """The guard's Redis unreachable (broker fine): the CRITICAL mail is sent, not dropped."""
    app = celery_app
    app.conf.worker_prefetch_multiplier = 1
    guard = TelemetryGuard(app, email=smtp.settings(**FAST_RETRIES),
                           redis_url=f"redis://127.0.0.1:{free_port()}/0")
    fail = critical_task(app, "t.redis_down")
    sent, errors = notifications("sent"), telemetry_errors("throttle")
    with capture_logs() as logs, worker(app, "tests", guard.settings.notification_queue):
        with pytest.raises(ValueError):
            fail.delay(1).get(timeout=20)
        [mail] = smtp.wait_for(1, timeout=15)
        wait_for(lambda: notifications("sent") - sent == 1)
        time.sleep(1.0)  # past any retry delay: a second mail would be here by now
    assert len(smtp.messages) == 1
    assert mail.message["Subject"] == "[CRITICAL] t.redis_down: ValueError"
    assert telemetry_errors("throttle") - errors == 1
    events = [e["event"] for e in logs if e["event"].startswith("notification.")]
    assert "notification.throttle_unavailable" in events
    assert "notification.failed" not in events and "notification.retry_scheduled" not in events


def test_an_escalation_is_never_throttled_by_a_lower_severity_mail(
        celery_app: Celery, smtp: CapturingSMTPServer) -> None:
    """HIGH then CRITICAL of one task and exception: both mailed; a 2nd HIGH is throttled."""
    guard = TelemetryGuard(celery_app, email=smtp.settings(
        recipients_by_severity={"critical": ["oncall@example.com"]}),
        routes={"high": ["email"], "critical": ["email"]})
    payload = {"task_name": "t.escalate", "exception_type": "KeyError", "message": "m",
               "time": "2024-01-01T00:00:00+00:00", "attempt": 1, "hostname": "h",
               "trace_id": None, "traceback": "tb", "fingerprint": ["t.escalate", "KeyError"]}
    task = guard.notify_task
    outcomes = [task.apply(args=({**payload, "severity": severity, "task_id": task_id},),
                           task_id=task_id).get()
                for task_id, severity in (("e-1", "high"), ("e-2", "critical"),
                                          ("e-3", "high"), ("e-4", "critical"))]
    assert outcomes == ["sent", "sent", "throttled", "throttled"]
    mails = smtp.wait_for(2)
    assert [(m.message["Subject"], m.rcpt_tos) for m in mails] == [
        ("[HIGH] t.escalate: KeyError", ["ops@example.com"]),
        ("[CRITICAL] t.escalate: KeyError", ["oncall@example.com"])]


def test_the_throttle_slot_belongs_to_one_severity_and_one_recipient_list() -> None:
    """Another severity or recipient list is another slot; recipient order does not matter."""
    payload = {"fingerprint": ["t.x", "KeyError"]}
    slot = fingerprint_hash(payload, "high", ["a@x", "b@x"])
    assert slot == fingerprint_hash(payload, "high", ["b@x", "a@x"])
    assert slot != fingerprint_hash(payload, "critical", ["a@x", "b@x"])
    assert slot != fingerprint_hash(payload, "high", ["a@x"])
