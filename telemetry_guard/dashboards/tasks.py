"""The task failures dashboard: failures, give-ups, exceptions, retries and run times."""

from __future__ import annotations

from .grafana import (
    Json,
    Query,
    bar_gauge,
    dashboard,
    datasource_variable,
    stat,
    threshold_steps,
    timeseries,
)
from .labels import SEVERITY_COLOURS, TASK, task_variable


def tasks_dashboard() -> Json:
    """Failures, give-ups, exceptions, retries, runtime and success ratio per task."""
    failures = f"telemetry_guard_task_failures_total{{{TASK}}}"
    giveups = f"telemetry_guard_task_giveups_total{{{TASK}}}"
    runs = "telemetry_guard_task_runtime_seconds_count"
    buckets = f"telemetry_guard_task_runtime_seconds_bucket{{{TASK}}}"

    def finished_ratio(by: str) -> str:
        # "or 0 * finished": a task that finished but never succeeded shows 0, not nothing
        finished = (f'sum{by} (rate({runs}{{{TASK}, outcome=~"success|failure"}}'
                    "[$__rate_interval]))")
        return (f'(sum{by} (rate({runs}{{{TASK}, outcome="success"}}[$__rate_interval]))\n'
                f"or 0 * {finished})\n/\n{finished}")

    panels = [
        stat("Success ratio (finished runs)",
             "Share of finished runs of the selected tasks that succeeded, over the last "
             "rate window: successes / (successes + give-ups). Attempts that ended in a "
             "retry are not counted, so a task that succeeds on its second try counts as "
             "a success. Bad: below 99 % (yellow) or 95 % (red). Next: find the task in "
             "'Success ratio per task' and its exception in 'Top exceptions'.",
             Query(finished_ratio(""), "success ratio", instant=True),
             unit="percentunit", decimals=2,
             thresholds=threshold_steps((None, "red"), (0.95, "yellow"), (0.99, "green"))),
        stat("Failed attempts / s",
             "Failed task attempts per second right now, retried or not (every exception "
             "a GuardedTask raised). Some is normal for flaky dependencies; a jump is not. "
             "Next: 'Failure rate by task and severity' shows which task it is.",
             Query(f"sum(rate({failures}[$__rate_interval])) or vector(0)", "failures/s",
                   instant=True),
             unit="ops", decimals=2,
             thresholds=threshold_steps((None, "green"), (1, "yellow"))),
        stat("Give-ups in range",
             "Task runs abandoned in the selected time range: retries exhausted or the "
             "error was not retryable. Each one is work that did not happen and sits in "
             "the dead-letter stream (telemetry_guard:dead) for replay. Bad: any give-up "
             "of a task that must not lose work. Next: 'Give-up rate by task and "
             "severity', then the task.gave_up log events for the reason.",
             Query(f"sum(increase({giveups}[$__range])) or vector(0)", "give-ups",
                   instant=True),
             decimals=0, thresholds=threshold_steps((None, "green"), (1, "orange"))),
        stat("Critical failures in range",
             "Failed attempts classified critical (e.g. MemoryError) in the selected time "
             "range. These are routed to Sentry and e-mail by default. Bad: anything "
             "above 0. Next: Sentry issues tagged severity=critical, and the "
             "'Notifications and telemetry health' dashboard to confirm the mails went out.",
             Query(f'sum(increase(telemetry_guard_task_failures_total{{{TASK}, '
                   f'severity="critical"}}[$__range])) or vector(0)',
                   "critical failures", instant=True),
             decimals=0, thresholds=threshold_steps((None, "green"), (1, "red"))),
        timeseries(
            "Failure rate by task and severity",
            "Failed attempts per second, one line per task and severity (low, medium, "
            "high, critical), including attempts that were retried. A flat low/medium "
            "line is usually a flaky dependency that retries absorb; a rising high or "
            "critical line is not. Next: compare with 'Give-up rate' (are retries "
            "saving the work?) and 'Top exceptions'.",
            [Query(f"sum by (task, severity) (rate({failures}[$__rate_interval]))",
                   "{{task}} {{severity}}")],
            colours=SEVERITY_COLOURS),
        timeseries(
            "Give-up rate by task and severity",
            "Runs abandoned per second (retries exhausted or not retryable), by task and "
            "severity. A retryable error that runs out of retries is escalated to at least "
            "high. Bad: any sustained line, above all high/critical. Next: task.gave_up "
            "log events (field reason), the dead-letter stream, and the 'Circuit "
            "breakers' dashboard if the task calls a protected dependency.",
            [Query(f"sum by (task, severity) (rate({giveups}[$__rate_interval]))",
                   "{{task}} {{severity}}")],
            colours=SEVERITY_COLOURS),
        bar_gauge(
            "Top exceptions (time range)",
            "The 10 exception classes with the most failed attempts of the selected tasks "
            "in the selected time range. One class far ahead of the rest usually means one "
            "broken dependency or one bad deploy. 'other' means more distinct classes "
            "than telemetry_guard_max_label_values. Next: search the logs for "
            "task.failed with that exception_type, or its Sentry issue.",
            Query("sort_desc(topk(10, sum by (exception) "
                  f"(increase({failures}[$__range]))))", "{{exception}}", instant=True)),
        timeseries(
            "Retries scheduled per task",
            "Retries scheduled per second, by task. Retries are how transient errors are "
            "absorbed, but each one is extra load on the dependency that failed. Bad: a "
            "steep rise (a retry storm) or retries without matching successes. Next: "
            "'Retry budget exhaustion' on the health dashboard and the breaker for that "
            "dependency.",
            [Query("sum by (task) (rate(telemetry_guard_task_retries_total"
                   f"{{{TASK}}}[$__rate_interval]))", "{{task}}")],
            width=8),
        timeseries(
            "Task attempts by outcome",
            "Attempts per second of the selected tasks, stacked by how they ended: success, "
            "retry (failed, retry scheduled) or failure (given up). Gives scale to the "
            "failure panels: 5 failures/s is a lot at 10 runs/s and little at 1000. Bad: "
            "the retry or failure band growing while success shrinks.",
            [Query(f"sum by (outcome) (rate({runs}{{{TASK}}}[$__rate_interval]))",
                   "{{outcome}}")],
            width=8, stacked=True,
            colours=(("success", "green"), ("retry", "yellow"), ("failure", "red"))),
        timeseries(
            "Runtime p50 / p95 / p99 by outcome",
            "Run time quantiles of the selected tasks, by outcome (success, retry, "
            "failure), estimated from the histogram buckets. With several tasks selected "
            "their runs are pooled: pick one task for its own distribution. Bad: failures "
            "taking as long as the timeout (a dependency hanging), or p99 climbing while "
            "p50 stays (queueing, contention). Next: traces of slow runs.",
            [Query(f"histogram_quantile({q}, sum by (le, outcome) "
                   f"(rate({buckets}[$__rate_interval])))", f"p{p} {{{{outcome}}}}")
             for q, p in (("0.5", "50"), ("0.95", "95"), ("0.99", "99"))],
            unit="s", width=12),
        timeseries(
            "Runtime p95 per task (successful runs)",
            "95th percentile run time of successful runs, one line per task. Shows which "
            "task slowed down. Bad: a step up after a deploy, or a task nearing its soft "
            "time limit. Next: 'Runtime p50 / p95 / p99 by outcome' with only that task "
            "selected.",
            [Query("histogram_quantile(0.95, sum by (le, task) (rate(telemetry_guard_task_"
                   f'runtime_seconds_bucket{{{TASK}, outcome="success"}}[$__rate_interval])))',
                   "{{task}}")],
            unit="s", width=12),
        timeseries(
            "Success ratio per task",
            "Per task, successes / (successes + give-ups) over the rate window; retried "
            "attempts are not counted. A task with no finished runs in the window has no "
            "point. Bad: a line dropping below 99 %. Next: that task's line in 'Give-up "
            "rate by task and severity' and its exceptions.",
            [Query(finished_ratio(" by (task)"), "{{task}}")],
            unit="percentunit", width=24, max_value=1),
    ]
    return dashboard(
        "telemetry-guard-tasks", "telemetry_guard / Task failures",
        "Failed attempts, retries and give-ups of Celery tasks run with GuardedTask, "
        "their exceptions and run times.",
        panels, [datasource_variable(), task_variable()])
