"""The notification task ``telemetry_guard.notify`` and its throttling, run on a worker.

One notification, worker side:

1. Throttle per fingerprint (task name + exception type), severity and recipient list:
   ``SET <prefix>notify:throttle:<hash> <token> NX PX <window>``. Losing the race means the
   same mail went out within the window: the occurrence is counted (``INCR
   <prefix>notify:suppressed:<hash>``, outcome ``throttled``). An escalation (another severity,
   other recipients) has its own slot, so a HIGH mail never swallows the CRITICAL one. When the
   throttle's Redis cannot be reached the mail is sent unthrottled (fail open) and
   ``telemetry_guard_telemetry_errors_total{sink="throttle"}`` counts it.
2. Send a plain-text mail with ``smtplib``; every header value is stripped of control
   characters, so no task name or message can add a header.
3. On an SMTP, network or Redis error: release the throttle slot (only if this delivery
   holds it) and retry with the notification retry policy.
4. After the last retry (or on an error no retry can fix): ``notification.failed``, outcome
   ``failed``, and the message goes to ``<prefix>dead`` with what is needed to replay it.

The suppressed count is read before sending and decremented by that amount only once the
mail is out (one atomic ``DECRBY``): occurrences counted while the mail was in flight are
kept for the next mail, and a worker killed mid-send loses nothing.

The task is a plain Celery ``Task`` (never a ``GuardedTask``): its own failures are logged
and counted, never notified. It is acked late and rejected on worker loss, so a killed
notification worker gets the message delivered again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import smtplib
import ssl as ssl_module
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid
from typing import Any

import redis
from celery import Task
from celery.exceptions import Retry

from .classify import Severity
from .config import _retry_policy
from .dead_letters import DEAD_STREAM, add_dead_letter
from .policy import RetryPolicy
from .sinks.email import CHANNEL, notification_priority

NOTIFY_TASK_NAME = "telemetry_guard.notify"
#: Errors a later attempt can fix: SMTP replies (4xx/5xx), refused connections, timeouts,
#: DNS failures (all ``OSError``) and an unreachable Redis (throttle, dead letters).
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (OSError, redis.RedisError)
#: Lines up to SMTP's own limit, so a long subject is not folded onto a second line.
MAIL_POLICY = SMTP_POLICY.clone(max_line_length=998)

#: How notifications are retried; the ``email`` setting's ``retry_policy`` (a RetryPolicy or
#: a dict of its fields) and ``retry_max_retries``/``retry_base_delay``/``retry_max_delay``
#: keys override it.
DEFAULT_NOTIFY_RETRY_POLICY = RetryPolicy(
    max_retries=10, base_delay=5.0, max_delay=600.0, retry_on=RETRYABLE_ERRORS)
#: Seconds smtplib waits for the server (connect and every reply).
SMTP_TIMEOUT = 10.0
SUBJECT_MAX_CHARS = 200
HEADER_MAX_CHARS = 998
#: A suppressed count nobody reads (the failure never recurred) expires after a week.
SUPPRESSED_TTL = 7 * 24 * 3600
REDIS_TIMEOUT = 5.0
FIELD_WIDTH = 13

EMAIL_KEYS = frozenset({
    "host", "port", "starttls", "ssl", "user", "password", "sender", "recipients",
    "recipients_by_severity", "timeout", "retry_policy", "retry_max_retries",
    "retry_base_delay", "retry_max_delay",
})
_RETRY_KEYS = (("retry_max_retries", "max_retries"), ("retry_base_delay", "base_delay"),
               ("retry_max_delay", "max_delay"))
_LINE_BREAKS = re.compile(r"\r\n|[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_ACQUIRE = "if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end " \
           "if redis.call('get', KEYS[1]) == ARGV[1] then return 1 end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end " \
           "return 0"
_SETTLE = "local n = redis.call('decrby', KEYS[1], ARGV[1]) " \
          "if n <= 0 then redis.call('del', KEYS[1]) end return n"


# -- text and message (pure) -----------------------------------------------------------
def _clean_char(char: str) -> str:
    category = unicodedata.category(char)
    if category in ("Cc", "Zl", "Zp"):
        return " "
    if category in ("Cf", "Cs"):  # bidi overrides, zero-width, lone surrogates
        return ""
    return char


def header_text(value: object, limit: int = HEADER_MAX_CHARS) -> str:
    """``value`` as one header-safe line: control characters gone, whitespace collapsed."""
    text = value if isinstance(value, str) else str(value)
    text = " ".join("".join(map(_clean_char, text)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def body_text(value: object) -> str:
    """Multi-line text for a mail body: ``\\n`` line ends, no other control characters."""
    text = value if isinstance(value, str) else str(value)
    lines = _LINE_BREAKS.split(text)
    return "\n".join("".join(c if c == "\t" else _clean_char(c) for c in line).rstrip()
                     for line in lines)


def subject_for(payload: Mapping[str, Any]) -> str:
    """``[CRITICAL] <task name>: <exception type>``, sanitised and bounded."""
    severity = str(payload.get("severity") or "unknown").upper()
    return header_text(
        f"[{severity}] {payload.get('task_name')}: {payload.get('exception_type')}",
        SUBJECT_MAX_CHARS)


def body_for(payload: Mapping[str, Any], *, suppressed: int = 0,
             throttle: float | None = None) -> str:
    """The plain-text body: one field per line, then the redacted traceback."""

    def line(label: str, value: object) -> str:
        return f"{label + ':':<{FIELD_WIDTH}}{header_text('-' if value is None else value)}"

    message = body_text(payload.get("message") or "").replace("\n", "\n" + " " * FIELD_WIDTH)
    exc_type = header_text(payload.get("exception_type") or "-")
    lines = [
        f"{header_text(payload.get('task_name'))} failed with {exc_type}.",
        "",
        line("Task", payload.get("task_name")),
        line("Task id", payload.get("task_id")),
        f"{'Exception:':<{FIELD_WIDTH}}{exc_type}: {message}".rstrip(),
        line("Severity", payload.get("severity")),
        line("Time", payload.get("time")),
        line("Attempt", payload.get("attempt")),
        line("Host", payload.get("hostname")),
        line("Trace id", payload.get("trace_id")),
    ]
    if suppressed > 0:
        lines.append(line("Suppressed", f"{suppressed} since the last mail"))
        window = f"; at most one mail per {throttle:g} s" if throttle else ""
        lines.append(f"{'':<{FIELD_WIDTH}}(same task and exception type{window})")
    lines += ["", "Traceback (redacted):", body_text(payload.get("traceback") or "(none)"), "",
              "Sent by telemetry_guard."]
    return "\n".join(lines) + "\n"


def build_message(payload: Mapping[str, Any], *, sender: str, recipients: Iterable[str],
                  suppressed: int = 0, throttle: float | None = None) -> EmailMessage:
    """The mail for one notification; headers built only from sanitised values."""
    sender = header_text(sender)
    domain = sender.rpartition("@")[2].strip(" >") or "telemetry-guard.invalid"
    message = EmailMessage(policy=MAIL_POLICY)
    message["Subject"] = subject_for(payload)
    message["From"] = sender
    message["To"] = ", ".join(header_text(r) for r in recipients)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid("telemetry-guard", domain=header_text(domain, 200))
    message["Auto-Submitted"] = "auto-generated"
    message["X-Telemetry-Guard-Severity"] = header_text(payload.get("severity") or "", 20)
    message.set_content(body_for(payload, suppressed=suppressed, throttle=throttle))
    return message


def fingerprint_hash(payload: Mapping[str, Any], severity: str | None = None,
                     recipients: Iterable[str] = ()) -> str:
    """A short stable hash of the payload's fingerprint (task name, exception type).

    With ``severity`` and ``recipients``, the hash of one throttle slot: the same failure
    escalated to another severity or recipient list is throttled on its own.
    """
    fingerprint = payload.get("fingerprint") or [payload.get("task_name"),
                                                 payload.get("exception_type")]
    parts = [str(part) for part in fingerprint]
    if severity is not None:
        parts += ["severity", severity, "to", *sorted(recipients)]
    text = "\x00".join(parts)
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]


# -- settings (pure) -----------------------------------------------------------------
@dataclass(frozen=True)
class EmailConfig:
    """The ``email`` setting, checked once: SMTP server, addresses and retry policy."""

    sender: str
    recipients: tuple[str, ...] = ()
    recipients_by_severity: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    host: str = "localhost"
    port: int = 25
    starttls: bool = False
    ssl: bool = False
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = SMTP_TIMEOUT
    retry_policy: RetryPolicy = DEFAULT_NOTIFY_RETRY_POLICY

    @classmethod
    def from_settings(cls, email: Mapping[str, Any]) -> EmailConfig:
        """Check the ``email`` dict; a ValueError names what is wrong."""
        unknown = sorted(set(email) - EMAIL_KEYS)
        if unknown:
            raise ValueError(f"telemetry_guard setting 'email': unknown key(s) "
                             f"{', '.join(unknown)}; valid: {', '.join(sorted(EMAIL_KEYS))}")
        sender = email.get("sender")
        if not isinstance(sender, str) or not sender.strip():
            raise ValueError("telemetry_guard setting 'email': 'sender' is required")
        recipients = _addresses(email.get("recipients") or (), "recipients")
        by_severity = {
            Severity.parse(severity).label: _addresses(addresses, f"recipients_by_severity"
                                                                  f"[{severity!r}]")
            for severity, addresses in dict(email.get("recipients_by_severity") or {}).items()}
        if not recipients and not any(by_severity.values()):
            raise ValueError("telemetry_guard setting 'email': 'recipients' is required")
        use_ssl, starttls = bool(email.get("ssl", False)), bool(email.get("starttls", False))
        if use_ssl and starttls:
            raise ValueError("telemetry_guard setting 'email': 'ssl' and 'starttls' exclude "
                             "each other")
        _address(sender, "sender")
        port = email.get("port")
        return cls(
            sender=sender, recipients=recipients, recipients_by_severity=by_severity,
            host=str(email.get("host") or "localhost"),
            port=int(port) if port else (465 if use_ssl else 587 if starttls else 25),
            starttls=starttls, ssl=use_ssl,
            user=email.get("user") or None, password=email.get("password"),
            timeout=float(email.get("timeout") or SMTP_TIMEOUT),
            retry_policy=_notify_policy(email))

    def recipients_for(self, severity: str) -> tuple[str, ...]:
        """The severity's own recipients when configured, else ``recipients``."""
        return self.recipients_by_severity.get(str(severity).lower()) or self.recipients


def _address(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"telemetry_guard setting 'email': {name} must be e-mail addresses")
    if header_text(value) != value.strip():
        raise ValueError(f"telemetry_guard setting 'email': {name} has control characters")
    return value.strip()


def _addresses(value: object, name: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    return tuple(dict.fromkeys(_address(item, name) for item in items))


def _notify_policy(email: Mapping[str, Any]) -> RetryPolicy:
    raw = email.get("retry_policy")
    if raw is None:
        policy = DEFAULT_NOTIFY_RETRY_POLICY
    elif isinstance(raw, RetryPolicy):
        policy = raw
    elif isinstance(raw, Mapping):
        policy = _retry_policy({"retry_on": RETRYABLE_ERRORS, **raw})
    else:
        raise ValueError("telemetry_guard setting 'email': retry_policy must be a RetryPolicy "
                         "or a dict of its fields")
    changes = {name: email[key] for key, name in _RETRY_KEYS if key in email}
    if "max_delay" in changes and "base_delay" not in changes:
        changes["base_delay"] = min(policy.base_delay, float(changes["max_delay"]))
    try:
        return dataclasses.replace(policy, **changes) if changes else policy
    except (TypeError, ValueError) as exc:
        raise ValueError(f"telemetry_guard setting 'email': {exc}") from None


# -- throttle (Redis) ------------------------------------------------------------------
class NotificationThrottle:
    """One mail per fingerprint per window, and how many occurrences were suppressed."""

    def __init__(self, redis_url: str | None, *, key_prefix: str, window: float) -> None:
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.window_ms = int(window * 1000)
        self._client: redis.Redis | None = None
        self._pid = 0

    @property
    def enabled(self) -> bool:
        """Whether there is a Redis to throttle in and a window to throttle over."""
        return self.redis_url is not None and self.window_ms > 0

    @property
    def client(self) -> redis.Redis:
        """This process's Redis client (re-created after fork)."""
        if self._client is None or self._pid != os.getpid():
            assert self.redis_url is not None
            self._client = redis.Redis.from_url(
                self.redis_url, socket_timeout=REDIS_TIMEOUT,
                socket_connect_timeout=REDIS_TIMEOUT)
            self._pid = os.getpid()
        return self._client

    def slot_key(self, fingerprint: str) -> str:
        return f"{self.key_prefix}notify:throttle:{fingerprint}"

    def suppressed_key(self, fingerprint: str) -> str:
        return f"{self.key_prefix}notify:suppressed:{fingerprint}"

    def acquire(self, fingerprint: str, token: str) -> bool:
        """Take the fingerprint's slot for one window (``SET NX PX``); False if another has it.

        The same ``token`` (the same message, redelivered after a lost worker) gets it again.
        """
        if not self.enabled:
            return True
        return bool(self.client.eval(_ACQUIRE, 1, self.slot_key(fingerprint), token,
                                     self.window_ms))

    def release(self, fingerprint: str, token: str) -> None:
        """Give the slot back, only if ``token`` still holds it (a failed send)."""
        if self.enabled:
            self.client.eval(_RELEASE, 1, self.slot_key(fingerprint), token)

    def suppress(self, fingerprint: str) -> int:
        """Count one suppressed occurrence; the count since the last mail."""
        if not self.enabled:
            return 0
        key = self.suppressed_key(fingerprint)
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, SUPPRESSED_TTL)
        return int(pipe.execute()[0])

    def pending(self, fingerprint: str) -> int:
        """Occurrences suppressed since the last mail."""
        if not self.enabled:
            return 0
        return int(self.client.get(self.suppressed_key(fingerprint)) or 0)

    def settle(self, fingerprint: str, reported: int) -> None:
        """A mail reported ``reported`` suppressed occurrences: take them off the count."""
        if self.enabled and reported > 0:
            self.client.eval(_SETTLE, 1, self.suppressed_key(fingerprint), reported)


# -- delivery (worker side) ------------------------------------------------------------
class Notifier:
    """Throttles, sends and retries one notification; built once per guard."""

    def __init__(self, guard: Any) -> None:
        settings = guard.settings
        self.config = EmailConfig.from_settings(settings.email)
        self.policy = self.config.retry_policy
        self.throttle = NotificationThrottle(
            settings.redis_url, key_prefix=settings.key_prefix,
            window=settings.notification_throttle)
        self.window = settings.notification_throttle
        self.dead_key = settings.key_prefix + DEAD_STREAM
        self.dead_maxlen = settings.dead_letter_maxlen
        self.dead_letters_evicted = guard.dead_letters_evicted
        self.metrics = guard.metrics
        self.log = guard.log

    def deliver(self, task: Any, payload: Mapping[str, Any]) -> str:
        """Throttle, then send; returns ``sent``, ``throttled`` or ``failed`` (or retries)."""
        request = task.request
        retries = request.retries or 0
        token = f"{request.id}:{retries}"
        severity = header_text(payload.get("severity") or "unknown", 20).lower()
        recipients = self.config.recipients_for(severity)
        fingerprint = fingerprint_hash(payload, severity, recipients)
        try:
            if not recipients:
                raise ValueError(f"no recipients for severity {severity!r}")
            throttled, suppressed = self._throttle(payload, severity, fingerprint, token)
            if throttled:
                self._count(severity, "throttled")
                self.log.info("notification.throttled", **self._fields(payload, severity),
                              fingerprint=fingerprint, suppressed=suppressed)
                return "throttled"
            message = build_message(payload, sender=self.config.sender, recipients=recipients,
                                    suppressed=suppressed, throttle=self.window)
            refused = self.send(message, recipients)
        except Exception as exc:
            self._release(fingerprint, token)
            retryable = isinstance(exc, self.policy.retry_on) and not isinstance(
                exc, self.policy.dont_retry_on)
            reason = "retries_exhausted" if retryable else "not_retryable"
            if retryable and retries < self.policy.max_retries:
                delay = self.policy.delay(retries + 1)
                self.log.info("notification.retry_scheduled", **self._fields(payload, severity),
                              error=type(exc).__name__, smtp_code=_smtp_code(exc),
                              retries=retries, delay_s=round(delay, 3))
                try:
                    raise task.retry(exc=exc, countdown=delay,
                                     max_retries=self.policy.max_retries) from exc
                except Retry:
                    raise
                except Exception:  # the retry could not be published: keep the message
                    reason = "retry_not_published"
            self._give_up(payload, severity, exc, retries, reason)
            return "failed"
        try:
            self.throttle.settle(fingerprint, suppressed)
        except redis.RedisError:  # the mail is out; the next one may over-report
            pass
        self._count(severity, "sent")
        self.log.info("notification.sent", **self._fields(payload, severity),
                      recipients=len(recipients) - len(refused), refused=len(refused),
                      suppressed=suppressed, deliveries=retries + 1)
        return "sent"

    def send(self, message: EmailMessage, recipients: Iterable[str]) -> dict[str, Any]:
        """Hand the mail to the SMTP server; the recipients it refused (all refused: raises)."""
        config = self.config
        smtp: smtplib.SMTP
        if config.ssl:
            smtp = smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout,
                                    context=ssl_module.create_default_context())
        else:
            smtp = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
        with smtp:
            if config.starttls:
                smtp.starttls(context=ssl_module.create_default_context())
            if config.user:
                smtp.login(config.user, config.password or "")
            refused = smtp.send_message(message, from_addr=config.sender,
                                        to_addrs=list(recipients))
        return dict(refused)

    def _throttle(self, payload: Mapping[str, Any], severity: str, fingerprint: str,
                  token: str) -> tuple[bool, int]:
        """(whether the slot is taken elsewhere, occurrences suppressed); fails open."""
        try:
            if not self.throttle.acquire(fingerprint, token):
                return True, self.throttle.suppress(fingerprint)
            return False, self.throttle.pending(fingerprint)
        except redis.RedisError as exc:  # unthrottled beats unsent
            self.metrics.telemetry_errors.labels("throttle").inc()
            self.log.warning("notification.throttle_unavailable",
                             **self._fields(payload, severity), error=type(exc).__name__)
            return False, 0

    def _release(self, fingerprint: str, token: str) -> None:
        try:
            self.throttle.release(fingerprint, token)
        except redis.RedisError:  # the slot expires by itself
            pass

    def _give_up(self, payload: Mapping[str, Any], severity: str, exc: BaseException,
                 retries: int, reason: str) -> None:
        dead_lettered = False
        if self.throttle.redis_url is not None:
            try:
                record = json.dumps(payload)
                replay = json.dumps({"task": NOTIFY_TASK_NAME, "args": [payload], "kwargs": {}})
                added = add_dead_letter(self.throttle.client, self.dead_key, NOTIFY_TASK_NAME,
                                        {"record": record, "replay": replay}, self.dead_maxlen)
                dead_lettered = True
                if added.evicted:
                    self.dead_letters_evicted(NOTIFY_TASK_NAME, added.evicted)
            except (redis.RedisError, TypeError, ValueError):
                pass
        self._count(severity, "failed")
        self.log.error("notification.failed", **self._fields(payload, severity),
                       error=type(exc).__name__, smtp_code=_smtp_code(exc), reason=reason,
                       deliveries=retries + 1, dead_lettered=dead_lettered)

    def _count(self, severity: str, outcome: str) -> None:
        self.metrics.notifications.labels(CHANNEL, severity, outcome).inc()

    @staticmethod
    def _fields(payload: Mapping[str, Any], severity: str) -> dict[str, Any]:
        return {"channel": CHANNEL, "task_name": payload.get("task_name"),
                "task_id": payload.get("task_id"), "severity": severity,
                "hostname": payload.get("hostname"), "pid": os.getpid()}


def _smtp_code(exc: BaseException) -> int | None:
    code = getattr(exc, "smtp_code", None)
    return code if isinstance(code, int) else None


class NotifyTask(Task):  # type: ignore[misc]
    """The plain Celery task behind ``telemetry_guard.notify`` (never a GuardedTask)."""

    #: Set by :func:`register_notify_task`; the latest guard of the app wins.
    notifier: Notifier | None = None
    #: Its failures are the notifier's own (counted there), never notified again.
    telemetry_guard_observe = False
    #: ``apply_async`` options for sending it: the notification queue and priority.
    send_options: dict[str, Any] = {}


def _notify(self: NotifyTask, payload: dict[str, Any]) -> str:
    """Send one failure notification e-mail: throttled, retried, never notifying itself."""
    if self.notifier is None:
        raise RuntimeError("telemetry_guard.notify has no notifier: create a TelemetryGuard "
                           "with the 'email' setting in the worker")
    return self.notifier.deliver(self, payload)


def register_notify_task(guard: Any) -> Any:
    """Register ``telemetry_guard.notify`` on the guard's app (once; later guards rebind it)."""
    notifier = Notifier(guard)
    # No ``queue``/``priority`` task attributes (Celery 6 drops them): whoever sends the task
    # (the e-mail sink, a dead-letter replay) passes ``send_options`` to ``apply_async``.
    task = guard.app.task(
        _notify, name=NOTIFY_TASK_NAME, base=NotifyTask, bind=True, shared=False, lazy=False,
        acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    if not isinstance(task, NotifyTask):
        raise RuntimeError(f"the app already has a task named {NOTIFY_TASK_NAME!r}")
    task.notifier = notifier
    conf = guard.app.conf
    task.send_options = {
        "queue": guard.settings.notification_queue,
        "priority": notification_priority(conf.broker_write_url or conf.broker_url)}
    return task
