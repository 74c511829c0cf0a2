"""Throttle, send and retry one notification, worker side."""

from __future__ import annotations

import json
import os
import smtplib
import ssl as ssl_module
from collections.abc import Callable, Iterable, Mapping
from email.message import EmailMessage
from typing import Any

import redis
from celery.exceptions import Retry

from ..core.channels import EMAIL as CHANNEL
from ..stores.dead_letters import DEAD_STREAM, add_dead_letter
from .email_config import EmailConfig
from .message import build_message, fingerprint_hash, header_text
from .throttle import NotificationThrottle

NOTIFY_TASK_NAME = "telemetry_guard.notify"


class Notifier:
    """Throttles, sends and retries one notification; built once per guard."""

    def __init__(self, settings: Any, *, metrics: Any, log: Any,
                 dead_letters_evicted: Callable[[str, int], None]) -> None:
        self.config = EmailConfig.from_settings(settings.email)
        self.policy = self.config.retry_policy
        self.throttle = NotificationThrottle(
            settings.redis_url, key_prefix=settings.key_prefix,
            window=settings.notification_throttle)
        self.window = settings.notification_throttle
        self.dead_key = settings.key_prefix + DEAD_STREAM
        self.dead_maxlen = settings.dead_letter_maxlen
        self.dead_letters_evicted = dead_letters_evicted
        self.metrics = metrics
        self.log = log

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
