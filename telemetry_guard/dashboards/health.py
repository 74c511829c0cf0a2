"""The health dashboard: whether notifications, telemetry sinks and the retry budget work."""

from __future__ import annotations

from .grafana import Json, Query, dashboard, datasource_variable, stat, threshold_steps, timeseries
from .labels import NOTIFICATION_COLOURS, SEVERITY_COLOURS, TASK, task_variable


def health_dashboard() -> Json:
    """Whether the alarms themselves work: notifications, sinks and the retry budget."""
    notifications = "telemetry_guard_notifications_total"
    errors = "telemetry_guard_telemetry_errors_total"
    budget = f"telemetry_guard_retry_budget_exhausted_total{{{TASK}}}"
    panels = [
        stat("Notifications failed in range",
             "Sentry events and e-mails that could not be delivered in the selected time "
             "range, after the notification task's own retries. Someone who should have "
             "been told was not. Bad: anything above 0. Next: 'Failed notifications by "
             "channel and severity' and the notification.failed log events (SMTP or "
             "Sentry DSN problems).",
             Query(f'sum(increase({notifications}{{outcome="failed"}}[$__range])) '
                   "or vector(0)", "failed", instant=True),
             decimals=0, thresholds=threshold_steps((None, "green"), (1, "red"))),
        stat("Notifications throttled in range",
             "Mails suppressed in the selected time range because the same task and "
             "exception was mailed less than telemetry_guard_notification_throttle seconds "
             "ago; the next mail reports how many were held back. High numbers mean one "
             "failure repeating. Next: 'Top exceptions' on the tasks dashboard.",
             Query(f'sum(increase({notifications}{{outcome="throttled"}}[$__range])) '
                   "or vector(0)", "throttled", instant=True),
             decimals=0, thresholds=threshold_steps((None, "green"), (100, "yellow"))),
        stat("Telemetry sink errors in range",
             "Failures inside telemetry sinks (log, metrics, tracing, error log, Sentry, "
             "e-mail) in the selected time range. Tasks were not affected, but some "
             "telemetry was lost. Bad: anything above 0. Next: 'Telemetry sink errors by "
             "sink', then the telemetry.sink_failed log events.",
             Query(f"sum(increase({errors}[$__range])) or vector(0)", "errors",
                   instant=True),
             decimals=0, thresholds=threshold_steps((None, "green"), (1, "orange"))),
        stat("Retries refused by budget in range",
             "Retries refused by the fleet-wide retry budget in the selected time range; "
             "those runs were given up at once instead of retried, to protect a struggling "
             "dependency from a retry storm. Bad: any, unless an outage is under way. "
             "Next: 'Retry budget exhaustion by task'.",
             Query(f"sum(increase({budget}[$__range])) or vector(0)", "refused",
                   instant=True),
             decimals=0, thresholds=threshold_steps((None, "green"), (1, "orange"))),
        timeseries(
            "Notifications by channel and outcome",
            "Notifications per second, by channel (sentry, email) and outcome: sent, "
            "throttled (a mail for the same task and exception went out recently) or "
            "failed (could not be delivered after retries). Bad: any failed line; sent "
            "dropping to zero while high/critical failures continue.",
            [Query(f"sum by (channel, outcome) (rate({notifications}[$__rate_interval]))",
                   "{{channel}} {{outcome}}")],
            colours=NOTIFICATION_COLOURS),
        timeseries(
            "Failed notifications by channel and severity",
            "Undeliverable notifications per second, by channel and the severity of the "
            "failure they were about. A failed critical e-mail means nobody was paged. "
            "Next: for email, the SMTP settings (telemetry_guard_email) and server; for "
            "sentry, the DSN and Sentry's status; then notification.failed log events.",
            [Query(f'sum by (channel, severity) (rate({notifications}{{outcome="failed"}}'
                   "[$__rate_interval]))", "{{channel}} {{severity}}")],
            colours=SEVERITY_COLOURS),
        timeseries(
            "Telemetry sink errors by sink",
            "Errors per second inside each telemetry sink; the tasks themselves were not "
            "affected (sinks fail open). errorlog means Redis is unreachable or slow; "
            "errorlog_overflow means error-log records were dropped from the in-process "
            "buffer. Bad: any sustained line. Next: telemetry.sink_failed log events "
            "(logged at most once a minute per sink).",
            [Query(f"sum by (sink) (rate({errors}[$__rate_interval]))", "{{sink}}")]),
        timeseries(
            "Retry budget exhaustion by task",
            "Retries per second refused by the fleet-wide retry budget, by task. The "
            "budget caps retries across all workers so that an outage does not turn into "
            "a retry storm; refused runs are given up. Bad: a sustained line outside an "
            "outage (budget too small). Next: 'Retries scheduled per task' on the tasks "
            "dashboard.",
            [Query(f"sum by (task) (rate({budget}[$__rate_interval]))", "{{task}}")]),
    ]
    return dashboard(
        "telemetry-guard-health", "telemetry_guard / Notifications and telemetry health",
        "Whether failures reach people (Sentry, e-mail), whether telemetry itself works, "
        "and how often the retry budget refused retries.",
        panels, [datasource_variable(), task_variable()])
