"""E-mail notifications: the task ``telemetry_guard.notify``, its throttle, its mail.

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

from .email_config import DEFAULT_NOTIFY_RETRY_POLICY, RETRYABLE_ERRORS, EmailConfig
from .message import (
    SUBJECT_MAX_CHARS,
    body_for,
    body_text,
    build_message,
    fingerprint_hash,
    header_text,
    subject_for,
)
from .notifier import NOTIFY_TASK_NAME, Notifier
from .task import NotifyTask, register_notify_task
from .throttle import NotificationThrottle

__all__ = [
    "DEFAULT_NOTIFY_RETRY_POLICY", "NOTIFY_TASK_NAME", "RETRYABLE_ERRORS", "SUBJECT_MAX_CHARS",
    "EmailConfig", "NotificationThrottle", "Notifier", "NotifyTask", "body_for", "body_text",
    "build_message", "fingerprint_hash", "header_text", "register_notify_task", "subject_for",
]
