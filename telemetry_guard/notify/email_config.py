"""The ``email`` setting, checked once: SMTP server, addresses, retry policy (pure)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from ..core.classify import Severity
from ..core.policy import RetryPolicy, policy_from_setting
from .message import header_text

#: Errors a later attempt can fix: SMTP replies (4xx/5xx), refused connections, timeouts,
#: DNS failures (all ``OSError``) and an unreachable Redis (throttle, dead letters).
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (OSError, redis.RedisError)
#: How notifications are retried; the ``email`` setting's ``retry_policy`` (a RetryPolicy or
#: a dict of its fields) and ``retry_max_retries``/``retry_base_delay``/``retry_max_delay``
#: keys override it.
DEFAULT_NOTIFY_RETRY_POLICY = RetryPolicy(
    max_retries=10, base_delay=5.0, max_delay=600.0, retry_on=RETRYABLE_ERRORS)
#: Seconds smtplib waits for the server (connect and every reply).
SMTP_TIMEOUT = 10.0

EMAIL_KEYS = frozenset({
    "host", "port", "starttls", "ssl", "user", "password", "sender", "recipients",
    "recipients_by_severity", "timeout", "retry_policy", "retry_max_retries",
    "retry_base_delay", "retry_max_delay",
})
_RETRY_KEYS = (("retry_max_retries", "max_retries"), ("retry_base_delay", "base_delay"),
               ("retry_max_delay", "max_delay"))


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
        policy = policy_from_setting({"retry_on": RETRYABLE_ERRORS, **raw})
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
