"""The pure parts of e-mail notification: payload, subject, body, message, settings, routing."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import time
import warnings
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import CDeprecationWarning, CPendingDeprecationWarning

from telemetry_guard import GuardedTask, RetryPolicy, Severity, TelemetryGuard
from telemetry_guard.core.events import FailureEvent
from telemetry_guard.notify import (
    DEFAULT_NOTIFY_RETRY_POLICY,
    NOTIFY_TASK_NAME,
    SUBJECT_MAX_CHARS,
    EmailConfig,
    NotifyTask,
    body_for,
    body_text,
    build_message,
    fingerprint_hash,
    header_text,
    subject_for,
)
from telemetry_guard.sinks.email import (
    EmailSink,
    build_payload,
    notification_priority,
    notification_queue,
)
from tests.servers import free_port

EMAIL = {"sender": "guard@example.com", "recipients": ["ops@example.com"]}


def event(**overrides: Any) -> FailureEvent:
    """A CRITICAL give-up routed to e-mail, with fields as GuardedTask builds them."""
    fields: dict[str, Any] = {
        "task_name": "shop.charge", "task_id": "abc-123", "attempt": 3, "max_retries": 2,
        "exception_type": "TimeoutError", "exception_module": "builtins",
        "message": "gateway timed out (token=[REDACTED])",
        "traceback": "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                     "TimeoutError: gateway timed out",
        "severity": Severity.CRITICAL, "decision": "give_up", "hostname": "w1@host",
        "trace_id": "0af7651916cd43dd8448eb211c80319c", "timestamp": 1_700_000_000.25,
        "kwargs": {"password": "[REDACTED]"}, "channels": frozenset({"email", "sentry"}),
    }
    fields.update(overrides)
    return FailureEvent(**fields)


def payload(**overrides: Any) -> dict[str, Any]:
    """The notification payload of :func:`event`."""
    return {**build_payload(event()), **overrides}


def test_payload_is_small_json_safe_and_carries_every_field_of_the_mail() -> None:
    """build_payload keeps the mail's fields, ISO 8601 UTC time, fingerprint, and no args."""
    data = build_payload(event())
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "task_name": "shop.charge", "task_id": "abc-123", "exception_type": "TimeoutError",
        "message": "gateway timed out (token=[REDACTED])", "severity": "critical",
        "time": "2023-11-14T22:13:20.250+00:00", "attempt": 3, "hostname": "w1@host",
        "trace_id": "0af7651916cd43dd8448eb211c80319c", "traceback": event().traceback,
        "fingerprint": ["shop.charge", "TimeoutError"],
    }


def test_payload_time_falls_back_to_now_when_the_event_has_none() -> None:
    """An event without a timestamp is stamped with the current UTC time."""
    stamped = dt.datetime.fromisoformat(build_payload(event(timestamp=0.0))["time"])
    assert stamped.utcoffset() == dt.timedelta(0)
    assert abs(stamped.timestamp() - time.time()) < 5


@pytest.mark.parametrize("raw, clean", [
    ("a\r\nBcc: x@evil", "a Bcc: x@evil"),
    ("a\nb\rc\x00d\x1be\x7ff", "a b c d e f"),
    ("line\u2028sep\u2029para\x85nel", "line sep para nel"),
    ("bidi\u202eevil\u200b", "bidievil"),
    ("  spaced \t out  ", "spaced out"),
])
def test_header_text_removes_line_breaks_and_control_characters(raw: str, clean: str) -> None:
    """header_text turns any text into one header-safe line."""
    assert header_text(raw) == clean


def test_subject_is_severity_task_and_exception_type() -> None:
    """The subject reads [CRITICAL] <task name>: <exception type>."""
    assert subject_for(payload()) == "[CRITICAL] shop.charge: TimeoutError"
    assert subject_for(payload(severity="high")) == "[HIGH] shop.charge: TimeoutError"


def test_subject_with_injected_headers_stays_one_bounded_line() -> None:
    """CR/LF in the task name or exception type cannot start a header; long names are cut."""
    subject = subject_for(payload(task_name="t\r\nBcc: x@evil", exception_type="E\nTo: y@z"))
    assert subject == "[CRITICAL] t Bcc: x@evil: E To: y@z"
    assert len(subject_for(payload(task_name="x" * 5000))) == SUBJECT_MAX_CHARS


def test_body_lists_every_field_then_the_traceback() -> None:
    """The body has task, id, exception, severity, time, attempt, host, trace id, traceback."""
    body = body_for(payload())
    for line in ("Task:        shop.charge", "Task id:     abc-123",
                 "Exception:   TimeoutError: gateway timed out (token=[REDACTED])",
                 "Severity:    critical", "Time:        2023-11-14T22:13:20.250+00:00",
                 "Attempt:     3", "Host:        w1@host",
                 "Trace id:    0af7651916cd43dd8448eb211c80319c"):
        assert line + "\n" in body
    assert body.index("Trace id:") < body.index("Traceback (redacted):\nTraceback (most recent")
    assert "Suppressed" not in body


def test_body_reports_suppressed_occurrences_and_the_window() -> None:
    """A mail after a throttled window says how many occurrences were suppressed."""
    body = body_for(payload(), suppressed=99, throttle=600.0)
    assert "Suppressed:  99 since the last mail\n" in body
    assert "one mail per 600 s" in body


def test_body_keeps_multiline_text_readable_and_free_of_control_characters() -> None:
    """Messages are indented under their field; only newlines and tabs survive in the body."""
    body = body_for(payload(message="first\r\nsecond", trace_id=None,
                            traceback="Trace\r\n\tframe\x1b[31m\x00\nEnd"))
    assert "Exception:   TimeoutError: first\n             second\n" in body
    assert "Trace id:    -\n" in body
    assert "Trace\n\tframe [31m\nEnd" in body
    assert body_text("a\rb\u2028c") == "a\nb\nc"


def test_message_has_only_configured_recipients_and_no_injected_header() -> None:
    """An injected Bcc/To in the task name or message never becomes a header."""
    evil = payload(task_name="t\r\nBcc: x@evil", message="m\r\nBcc: y@evil\r\n\r\nforged")
    message = build_message(evil, sender="guard@example.com", recipients=["a@example.com",
                                                                           "b@example.com"])
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert parsed.get_all("Bcc") is None
    assert parsed["To"] == "a@example.com, b@example.com"
    assert parsed["From"] == "guard@example.com"
    assert parsed["Subject"] == "[CRITICAL] t Bcc: x@evil: TimeoutError"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed.get_content_type() == "text/plain"


def test_recipients_by_severity_replace_the_default_list_for_that_severity() -> None:
    """recipients_by_severity wins for its severities; others get recipients."""
    config = EmailConfig.from_settings({
        **EMAIL, "recipients_by_severity": {"CRITICAL": ["oncall@example.com", "cto@x.io"],
                                            "high": "team@example.com"}})
    assert config.recipients_for("critical") == ("oncall@example.com", "cto@x.io")
    assert config.recipients_for("high") == ("team@example.com",)
    assert config.recipients_for("medium") == ("ops@example.com",)


def test_email_config_defaults_ports_and_hides_the_password() -> None:
    """Ports follow ssl/starttls; the password never shows in repr."""
    assert EmailConfig.from_settings(EMAIL).port == 25
    assert EmailConfig.from_settings({**EMAIL, "starttls": True}).port == 587
    secret = EmailConfig.from_settings({**EMAIL, "ssl": True, "user": "u", "password": "pw-x"})
    assert secret.port == 465 and "pw-x" not in repr(secret)
    assert EmailConfig.from_settings({**EMAIL, "recipients": "one@example.com"}).recipients == (
        "one@example.com",)


@pytest.mark.parametrize("bad, words", [
    ({"recipients": ["ops@example.com"]}, "'sender' is required"),
    ({"sender": "g@x.io"}, "'recipients' is required"),
    ({**EMAIL, "recipient": "typo@x.io"}, "unknown key(s) recipient"),
    ({**EMAIL, "recipients": ["ok@x.io\r\nBcc: evil@x.io"]}, "control characters"),
    ({**EMAIL, "ssl": True, "starttls": True}, "exclude each other"),
    ({**EMAIL, "recipients_by_severity": {"urgent": ["a@x.io"]}}, "unknown severity"),
    ({**EMAIL, "retry_base_delay": 10, "retry_max_delay": 1}, "max_delay"),
])
def test_email_config_rejects_bad_settings_clearly(bad: dict[str, Any], words: str) -> None:
    """Mistakes in the email setting fail at start-up with a message naming them."""
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        EmailConfig.from_settings(bad)


def test_notification_retry_policy_is_configurable_through_the_email_setting() -> None:
    """Defaults: 10 retries up to 600 s; retry_* keys and retry_policy override them."""
    assert EmailConfig.from_settings(EMAIL).retry_policy == DEFAULT_NOTIFY_RETRY_POLICY
    assert DEFAULT_NOTIFY_RETRY_POLICY.max_retries == 10
    assert DEFAULT_NOTIFY_RETRY_POLICY.max_delay == 600.0
    fast = EmailConfig.from_settings({**EMAIL, "retry_max_retries": 3, "retry_base_delay": 0.1,
                                      "retry_max_delay": 0.5}).retry_policy
    assert (fast.max_retries, fast.base_delay, fast.max_delay) == (3, 0.1, 0.5)
    assert fast.should_retry(ConnectionRefusedError()) and not fast.should_retry(ValueError())
    custom = EmailConfig.from_settings({**EMAIL, "retry_policy": {
        "max_retries": 4, "jitter": "none", "retry_on": ["OSError"]}}).retry_policy
    assert (custom.max_retries, custom.jitter, custom.retry_on) == (4, "none", (OSError,))
    given = RetryPolicy(max_retries=1)
    assert EmailConfig.from_settings({**EMAIL, "retry_policy": given}).retry_policy is given


def test_fingerprint_hash_is_stable_per_task_and_exception_type() -> None:
    """Same task and exception type → same hash; a different one → a different hash."""
    first = fingerprint_hash(payload())
    assert first == fingerprint_hash(payload(task_id="other", message="other"))
    assert first != fingerprint_hash(payload(fingerprint=["shop.charge", "KeyError"]))
    assert len(first) == 32


@pytest.mark.parametrize("url, priority", [
    ("redis://localhost:6379/0", 0), ("rediss://h:6380/1", 0), ("sentinel://h:26379", 0),
    ("amqp://guest@localhost//", 9), ("pyamqp://h//", 9), (None, 9),
    ("sqs://", None), ("memory://", None),
])
def test_priority_is_the_highest_of_the_transport(url: str | None, priority: int | None) -> None:
    """Redis serves 0 first, RabbitMQ serves high numbers first; others have no priority."""
    assert notification_priority(url) == priority


def test_rabbitmq_notification_queue_is_declared_with_max_priority() -> None:
    """On RabbitMQ the queue needs x-max-priority for message priority to count."""
    queue = notification_queue("telemetry_guard.notifications", "amqp://h//")
    assert queue.queue_arguments == {"x-max-priority": 10}
    assert queue.routing_key == "telemetry_guard.notifications"
    assert not notification_queue("telemetry_guard.notifications", "redis://h").queue_arguments


def test_notify_task_is_a_plain_late_acked_task_on_the_notification_queue() -> None:
    """The notify task: named, acks late, requeued on worker loss, no result, not guarded;
    registered when the app finalizes, routed by send options (no Celery-6-deprecated
    ``queue``/``priority`` task attributes, so no deprecation warning)."""
    app = Celery("notify-test", broker="redis://127.0.0.1:1/0", set_as_current=False)
    guard = TelemetryGuard(app, email=EMAIL, redis_url=None)
    assert NOTIFY_TASK_NAME not in app._tasks  # nothing registered before finalize
    with warnings.catch_warnings():
        warnings.simplefilter("error", CDeprecationWarning)  # Celery: "removed in 6.0"
        warnings.simplefilter("error", CPendingDeprecationWarning)
        app.finalize()
        task = guard.notify_task
    assert task.name == NOTIFY_TASK_NAME and task.app is app
    assert isinstance(task, NotifyTask) and not isinstance(task, GuardedTask)
    assert task.acks_late and task.reject_on_worker_lost and task.ignore_result
    assert getattr(task, "queue", None) is None and task.priority is None  # not set by us
    assert task.send_options == {"queue": "telemetry_guard.notifications", "priority": 0}
    again = TelemetryGuard(app, email={**EMAIL, "recipients": ["new@example.com"]},
                           redis_url=None, notification_queue="mail")
    assert again.notify_task is task and task.send_options["queue"] == "mail"
    assert task.notifier.config.recipients == ("new@example.com",)
    again.close()


def test_email_sink_publishes_only_failures_routed_to_email() -> None:
    """One message on the notification queue for an e-mail route, none otherwise."""
    app = Celery("sink-test", broker="memory://", set_as_current=False)
    guard = TelemetryGuard(app, email=EMAIL, redis_url=None, notification_queue="tg.mail")
    [sink] = [s for s in guard.dispatcher.sinks if isinstance(s, EmailSink)]
    sink.on_failure(event(channels=frozenset({"sentry"})))
    sink.on_failure(event())
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue("tg.mail")
        message = queue.get(timeout=1)
        assert message.headers["task"] == NOTIFY_TASK_NAME
        args, kwargs, _ = message.decode()
        assert args == [build_payload(event())] and kwargs == {}
        message.ack()
        assert queue.qsize() == 0
        queue.close()
    guard.close()


def test_email_sink_raises_quickly_when_the_broker_is_down() -> None:
    """An unreachable broker: the sink raises (counted by the dispatcher) within ~a second."""
    app = Celery("down-test", broker=f"redis://127.0.0.1:{free_port()}/0", set_as_current=False)
    guard = TelemetryGuard(app, email=EMAIL, redis_url=None)
    [sink] = [s for s in guard.dispatcher.sinks if isinstance(s, EmailSink)]
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - kombu's OperationalError or a socket error
        sink.on_failure(event())
    assert time.monotonic() - started < 3.0
    guard.close()
