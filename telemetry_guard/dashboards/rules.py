"""The Prometheus recording and alerting rules, generated from the same config as the
dashboards (``alerts/telemetry_guard.rules.yml`` is this module's output for the defaults).

Every aggregation keeps the config's grouping labels (``job`` by default), every exported
series read carries the config's selector, and every alert links its runbook section and
the dashboard that shows it (``runbook_url``, ``dashboard_url``).
"""

from __future__ import annotations

from .config import MonitoringConfig
from .periodic_rules import periodic_alerts
from .rule_model import Group, Rule, RuleWriter

#: The default objective of every task without an override.
DEFAULT_OBJECTIVE = 0.99
#: Windows of the SLI's recording rules.
WINDOWS = ("5m", "30m", "1h", "6h", "3d")
#: Multi-window, multi-burn-rate tiers (Google SRE workbook, ch. 5): name, severity,
#: burn-rate factor, long window, short window, ``for``, share of the 30-day budget spent.
BURN_TIERS = (
    ("TelemetryGuardErrorBudgetFastBurn", "critical", 14.4, "1h", "5m", "2m",
     "2% of the budget in 1h"),
    ("TelemetryGuardErrorBudgetSlowBurn", "critical", 6, "6h", "30m", "15m",
     "5% of the budget in 6h"),
    ("TelemetryGuardErrorBudgetLongBurn", "warning", 1, "3d", "6h", "1h",
     "10% of the budget in 3d"),
)
TASKS_DASHBOARD = "telemetry-guard-tasks"
BREAKERS_DASHBOARD = "telemetry-guard-breakers"
HEALTH_DASHBOARD = "telemetry-guard-health"


class RuleBuilder(RuleWriter):
    """The rule groups for one config."""

    # -- groups ------------------------------------------------------------------------

    def groups(self) -> list[Group]:
        return [Group("telemetry_guard_sli", self.sli()),
                Group("telemetry_guard_retries", [Rule(
                    record="telemetry_guard:task_retries:rate5m",
                    expr=self.series(f"sum {self.by('task')} "
                                     "(rate(telemetry_guard_task_retries_total[5m]))"))]),
                Group("telemetry_guard_alerts", self.alerts())]

    def sli(self) -> list[Rule]:
        rules: list[Rule] = []
        names = {"5m": "5 minutes", "30m": "30 minutes", "1h": "1 hour", "6h": "6 hours",
                 "3d": "3 days"}
        for window in WINDOWS:
            g, s, e = (f"telemetry_guard:task_giveups:rate{window}",
                       f"telemetry_guard:task_successes:rate{window}",
                       f"telemetry_guard:task_executions:rate{window}")
            rules += [
                Rule(record=g, comment=names[window], expr=self.series(
                    f"sum {self.by('task')} (rate(telemetry_guard_task_giveups_total[{window}]))")),
                Rule(record=s, expr=self.series(
                    f"sum {self.by('task')} (rate(telemetry_guard_task_runtime_seconds_count"
                    f'{{outcome="success"}}[{window}]))')),
                Rule(record=e, expr=f"{g} + {s}\nor {g}\nor {s}"),
                Rule(record=f"telemetry_guard:task_error_ratio:rate{window}",
                     expr=f"({g} or 0 * {s})\n/ {e}"),
            ]
        rules += [
            Rule(record="telemetry_guard:task_slo_objective:effective",
                 comment="The objective of each task: its valid override (one per task, "
                         "for every group),\nelse the default "
                         f"{DEFAULT_OBJECTIVE} for every task that ran in the last 6 hours. "
                         "Change\nthe default here.",
                 expr=f"group {self.by('task')} (telemetry_guard:task_executions:rate6h)\n"
                      "  * on(task) group_left\n"
                      "  max by (task) (telemetry_guard:task_slo_objective > 0 < 1)\n"
                      f"or {self.on('task')}\n"
                      f"{DEFAULT_OBJECTIVE} * group {self.by('task')} "
                      "(telemetry_guard:task_executions:rate6h)"),
            Rule(record="telemetry_guard:task_error_budget:ratio",
                 comment="The error budget as a ratio: the share of executions allowed to "
                         "give up.",
                 expr="1 - telemetry_guard:task_slo_objective:effective"),
        ]
        for i, window in enumerate(WINDOWS):
            rules.append(Rule(
                record=f"telemetry_guard:task_error_budget_burn:rate{window}",
                comment="" if i else "Burn rates: how many times faster than \"exactly on "
                                     "budget\" it is spent.",
                expr=f"telemetry_guard:task_error_ratio:rate{window} / "
                     "telemetry_guard:task_error_budget:ratio"))
        return rules

    def alerts(self) -> list[Rule]:
        return [*self.burn_alerts(), self.objective_invalid(), *self.failure_alerts(),
                *self.retry_alerts(), *self.breaker_alerts(), *self.telemetry_alerts(),
                *periodic_alerts(self)]

    # -- alerts ------------------------------------------------------------------------

    def burn_alerts(self) -> list[Rule]:
        rules = []
        comments = {
            "TelemetryGuardErrorBudgetFastBurn":
                "-- Error budget " + "-" * 62 + "\nPage: 2% of the 30-day budget in one "
                "hour. The last condition is a low-traffic\nguard: at least 3 give-ups "
                "in the hour, so that a rarely run task does not page\nfor one or two "
                "give-ups (the slower tiers still catch those).",
            "TelemetryGuardErrorBudgetSlowBurn": "Page: 5% of the 30-day budget in six hours.",
            "TelemetryGuardErrorBudgetLongBurn":
                "Ticket: 10% of the 30-day budget in three days: a slow leak no page "
                "catches.",
        }
        kinds = {"critical": "page", "warning": "ticket"}
        for name, severity, factor, long, short, for_, _ in BURN_TIERS:
            burn = "telemetry_guard:task_error_budget_burn:rate"
            expr = (f"{burn}{long} > {factor}\n"
                    f"and {self.on('task')} {burn}{short} > {factor}")
            if name.endswith("FastBurn"):
                expr += (f"\nand {self.on('task')} telemetry_guard:task_giveups:rate{long} "
                         "* 3600 >= 3")
            ratio = self.query(f"telemetry_guard:task_error_ratio:rate{long}{{%s}}", "task")
            objective = self.query("telemetry_guard:task_slo_objective:effective{%s}", "task")
            lasts = self.query(f"2592000 / {burn}{long}{{%s}}", "task")
            rules.append(Rule(
                alert=name, comment=comments[name], expr=expr, for_=for_, severity=severity,
                summary="Task {{ $labels.task }} is "
                        + ("burning its error budget fast" if factor > 10 else
                           "steadily burning its error budget" if factor > 1 else
                           "slowly spending its error budget"),
                description=(
                    "{{ $labels.task }} gave up on\n"
                    f"{{{{ with {ratio} | query }}}}{{{{ . | first | value | "
                    "humanizePercentage }}{{ end }}\n"
                    f"of its executions over the last {long}: a burn rate of "
                    "{{ $value | printf \"%.1f\" }}x\nagainst its\n"
                    f"{{{{ with {objective} | query }}}}{{{{ . | first | value | "
                    "humanizePercentage }}{{ end }}\n"
                    f"success objective ({kinds[severity]} above {factor}x over both {long} "
                    f"and {short}).\nAt this rate the 30-day error budget lasts\n"
                    f"{{{{ with {lasts} | query }}}}{{{{ . | first | value | "
                    "humanizeDuration }}{{ end }}."),
                dashboard=TASKS_DASHBOARD, dashboard_vars=("task",)))
        return rules

    def objective_invalid(self) -> Rule:
        return Rule(
            alert="TelemetryGuardSLOObjectiveInvalid",
            comment="A per-task objective that cannot be a ratio (e.g. 99.9 instead of 0.999) "
                    "is\nignored by telemetry_guard:task_slo_objective:effective; say so.",
            expr="telemetry_guard:task_slo_objective\n"
                 "unless telemetry_guard:task_slo_objective > 0 < 1",
            for_="5m", severity="warning",
            summary="Invalid SLO objective for task {{ $labels.task }}",
            description=(
                "telemetry_guard:task_slo_objective for task {{ $labels.task }} is "
                "{{ $value }};\nan objective is a ratio strictly between 0 and 1 (0.999, "
                "not 99.9).\nThe default 99% applies to {{ $labels.task }} until it is "
                "fixed."),
            dashboard=TASKS_DASHBOARD, dashboard_vars=("task",), grouped=False)

    def failure_alerts(self) -> list[Rule]:
        critical = 'telemetry_guard_task_failures_total{severity="critical"}'
        return [
            Rule(alert="TelemetryGuardCriticalFailure",
                 comment="-- Failures " + "-" * 66 + "\nAny failed attempt classified "
                         "critical. The `unless ... offset 5m` term catches\nthe first one: "
                         "a labelled counter is born at its first increment, so its first\n"
                         "sample is already 1 and increase() cannot see that step.",
                 expr=self.counted_at_all(critical, "5m", "task", "exception"),
                 for_="0m", severity="critical",
                 summary="Critical failure in task {{ $labels.task }} "
                         "({{ $labels.exception }})",
                 description=(
                     "{{ $labels.task }} failed {{ $value | printf \"%.0f\" }} time(s) with\n"
                     "{{ $labels.exception }}, classified critical, in the last 5 minutes.\n"
                     "Each failure is in the telemetry_guard:errors stream and, with the "
                     "default\nroutes, in Sentry and in the critical e-mail."),
                 dashboard=TASKS_DASHBOARD, dashboard_vars=("task",)),
            Rule(alert="TelemetryGuardTaskGivingUp",
                 comment="Give-ups in every 10-minute window for 20 minutes: a task that "
                         "keeps giving up,\nwhatever its volume (the burn-rate alerts judge "
                         "the ratio).",
                 expr=self.series(f"sum {self.by('task')} "
                                  "(increase(telemetry_guard_task_giveups_total[10m])) > 0"),
                 for_="20m", severity="warning",
                 summary="Task {{ $labels.task }} keeps giving up",
                 description=(
                     "{{ $labels.task }} gave up {{ $value | printf \"%.0f\" }} time(s) in "
                     "the last\n10 minutes and has been giving up for over 20 minutes; "
                     "given-up tasks are in\nthe telemetry_guard:dead stream, ready to "
                     "replay."),
                 dashboard=TASKS_DASHBOARD, dashboard_vars=("task",)),
        ]

    def retry_alerts(self) -> list[Rule]:
        baseline = (f"sum {self.by('task')} "
                    "(rate(telemetry_guard_task_retries_total[6h] offset 30m))")
        normal = self.query(
            "sum(rate(telemetry_guard_task_retries_total{%s}[6h] offset 30m))", "task",
            raw=True)
        return [
            Rule(alert="TelemetryGuardRetryStorm",
                 comment="-- Retries " + "-" * 67 + "\nRetries per second over 5m above an "
                         "absolute floor (0.1/s: 30 in 5 minutes, so\nidle and quiet tasks "
                         "never alert) and more than 5x the task's own average over\nthe 6 "
                         "hours before the last 30 minutes (a task that had no retries then "
                         "has a\nbaseline of 0).",
                 expr=self.series(
                     "telemetry_guard:task_retries:rate5m > 0.1\n"
                     f"and {self.on('task')}\n"
                     "(\n"
                     "    telemetry_guard:task_retries:rate5m\n"
                     f"  > 5 * {baseline}\n"
                     "  or\n"
                     "    telemetry_guard:task_retries:rate5m\n"
                     f"  unless {self.on('task')} {baseline}\n"
                     ")"),
                 for_="10m", severity="warning",
                 summary="Retry storm in task {{ $labels.task }}",
                 description=(
                     "{{ $labels.task }} scheduled {{ $value | printf \"%.2f\" }} retries/s "
                     "over the last\n5 minutes, more than 5x its own recent normal\n"
                     f"({{{{ with {normal} | query }}}}{{{{ . | first | value | "
                     "printf \"%.2f\" }}/s{{ else }}no retries{{ end }}\nin the 6 hours up "
                     "to 30 minutes ago). Every retry adds load on whatever is\nfailing."),
                 dashboard=TASKS_DASHBOARD, dashboard_vars=("task",)),
            Rule(alert="TelemetryGuardRetryBudgetExhausted",
                 comment="The fleet-wide retry budget refusing retries for 10 minutes: those "
                         "failures\ngive up at once instead of retrying.",
                 expr=self.series(
                     f"sum {self.by('task')} "
                     "(increase(telemetry_guard_retry_budget_exhausted_total[10m])) > 0"),
                 for_="10m", severity="warning",
                 summary="Retry budget exhausted for task {{ $labels.task }}",
                 description=(
                     "The fleet-wide retry budget refused {{ $value | printf \"%.0f\" }} "
                     "retries of\n{{ $labels.task }} in the last 10 minutes; each refused "
                     "retry became a give-up."),
                 dashboard=TASKS_DASHBOARD, dashboard_vars=("task",)),
        ]

    def breaker_alerts(self) -> list[Rule]:
        rejected = self.query(
            'sum(rate(telemetry_guard_breaker_calls_total{%s,outcome=\\"rejected\\"}[5m]))',
            "breaker", raw=True)
        return [
            Rule(alert="TelemetryGuardBreakerOpen",
                 comment="-- Circuit breakers " + "-" * 58 + "\nNot closed (open, or "
                         "half-open while its trial calls fail) for 10 minutes,\nas seen by "
                         "any worker.",
                 expr=self.series(f"max {self.by('breaker')} "
                                  '(telemetry_guard_breaker_state{state=~"open|half_open"})'
                                  " == 1"),
                 for_="10m", severity="warning",
                 summary="Circuit breaker {{ $labels.breaker }} is open",
                 description=(
                     "Circuit breaker {{ $labels.breaker }} has not closed for over 10 "
                     "minutes\n(open, or half-open with failing trial calls); it rejects\n"
                     f"{{{{ with {rejected} | query }}}}{{{{ . | first | value | "
                     "printf \"%.2f\" }}{{ else }}0{{ end }}\ncalls/s, which get the task's "
                     "fallback or fail."),
                 dashboard=BREAKERS_DASHBOARD, dashboard_vars=("breaker",)),
            Rule(alert="TelemetryGuardBreakerFlapping",
                 comment="Tripped (closed -> open) at least 4 times in an hour: it keeps "
                         "recovering and\ntripping again.",
                 expr=self.series(
                     f"sum {self.by('breaker')} (\n"
                     "  increase(telemetry_guard_breaker_transitions_total"
                     '{from_state="closed",to_state="open"}[1h])\n'
                     ") >= 4"),
                 for_="5m", severity="warning",
                 summary="Circuit breaker {{ $labels.breaker }} is flapping",
                 description=(
                     "Circuit breaker {{ $labels.breaker }} tripped from closed to open\n"
                     "{{ $value | printf \"%.0f\" }} times in the last hour."),
                 dashboard=BREAKERS_DASHBOARD, dashboard_vars=("breaker",)),
        ]

    def telemetry_alerts(self) -> list[Rule]:
        failed = 'telemetry_guard_notifications_total{outcome="failed"}'
        return [
            Rule(alert="TelemetryGuardNotificationsFailing",
                 comment="-- The telemetry itself " + "-" * 54 + "\n`failed` is final "
                         "(after the notification task's own retries): a lost message.\n"
                         "Same first-increment term as TelemetryGuardCriticalFailure.",
                 expr=self.counted_at_all(failed, "15m", "channel"),
                 for_="0m", severity="warning",
                 summary="{{ $labels.channel }} notifications are failing",
                 description=(
                     "{{ $value | printf \"%.0f\" }} {{ $labels.channel }} notification(s) "
                     "failed for\ngood in the last 15 minutes (after the notification task's "
                     "retries): whatever\nthey reported reached nobody through "
                     "{{ $labels.channel }}."),
                 dashboard=HEALTH_DASHBOARD),
            Rule(alert="TelemetryGuardTelemetrySinkFailing",
                 comment="A sink failing for 10 minutes (one failure now and then is "
                         "tolerated: sinks fail\nopen and log it).",
                 expr=self.series(f"sum {self.by('sink')} "
                                  "(increase(telemetry_guard_telemetry_errors_total[5m])) > 0"),
                 for_="10m", severity="warning",
                 summary="Telemetry sink {{ $labels.sink }} is failing",
                 description=(
                     "The {{ $labels.sink }} sink failed {{ $value | printf \"%.0f\" }} "
                     "time(s) in the\nlast 5 minutes and has kept failing for over 10 "
                     "minutes. Tasks are not\naffected (sinks fail open), but "
                     "{{ $labels.sink }} telemetry is being lost."),
                 dashboard=HEALTH_DASHBOARD),
        ]


def rule_groups(config: MonitoringConfig) -> list[Group]:
    """The rule groups for ``config``."""
    return RuleBuilder(config).groups()
