"""Grafana dashboards for the telemetry_guard metrics, generated from plain Python data.

``python -m telemetry_guard.dashboards [--out DIR] [--check]`` writes (or, with
``--check``, compares) one JSON file per dashboard, named ``<uid>.json``. The committed
copies live in the repository's ``dashboards/`` folder, ready to import or provision.

Every PromQL expression of every panel is written in this module and nowhere else;
:func:`all_queries` lists them. Panels and queries use the data source only through
the ``$datasource`` template variable (``${datasource}``), never a data source uid, so
the same files work in any Grafana that has a Prometheus data source.

Plain dicts rather than ``grafana-foundation-sdk``: the SDK needs Python 3.11 while
this package supports 3.10. ``SCHEMA_VERSION`` is the one the SDK emits for Grafana 11.6.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Json = dict[str, Any]

SCHEMA_VERSION = 41
TAG = "telemetry_guard"
DATASOURCE: Json = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24

#: How the template variables used in :func:`all_queries` can be replaced to run the
#: expressions outside Grafana (plain text substitution, in this order).
VARIABLE_SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    ("$__rate_interval", "5m"),
    ("$__range", "1h"),
    ("$task", ".*"),
    ("$breaker", ".*"),
)

# Colours by label value, matched against the end of a series' display name.
SEVERITY_COLOURS = (("low", "blue"), ("medium", "yellow"), ("high", "orange"),
                    ("critical", "red"))
CALL_COLOURS = (("success", "green"), ("failure", "orange"), ("rejected", "red"))
NOTIFICATION_COLOURS = (("sent", "green"), ("throttled", "yellow"), ("failed", "red"))


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False


# ---------------------------------------------------------------------------
# Panel and variable builders (small, data in → Grafana JSON out)


def _target(query: Query, ref_id: str) -> Json:
    return {
        "datasource": dict(DATASOURCE),
        "editorMode": "code",
        "expr": query.expr,
        "instant": query.instant,
        "legendFormat": query.legend or "__auto",
        "range": not query.instant,
        "refId": ref_id,
    }


def _panel(kind: str, title: str, description: str, queries: Sequence[Query], *,
           width: int, height: int, field_defaults: Json, options: Json,
           overrides: Sequence[Json] = ()) -> Json:
    return {
        "datasource": dict(DATASOURCE),
        "description": description,
        "fieldConfig": {"defaults": field_defaults, "overrides": list(overrides)},
        "gridPos": {"h": height, "w": width, "x": 0, "y": 0},
        "options": options,
        "targets": [_target(q, chr(ord("A") + i)) for i, q in enumerate(queries)],
        "title": title,
        "type": kind,
    }


def _thresholds(*steps: tuple[float | None, str]) -> Json:
    return {"mode": "absolute",
            "steps": [{"color": colour, "value": value} for value, colour in steps]}


def _colour_overrides(colours: Iterable[tuple[str, str]]) -> list[Json]:
    return [{"matcher": {"id": "byRegexp", "options": f"(^| ){value}$"},
             "properties": [{"id": "color",
                             "value": {"fixedColor": colour, "mode": "fixed"}}]}
            for value, colour in colours]


def stat(title: str, description: str, query: Query, *, unit: str = "short",
         thresholds: Json | None = None, decimals: int | None = None, width: int = 6,
         height: int = 4) -> Json:
    """A single-number panel showing the last value of one query."""
    defaults: Json = {
        "color": {"mode": "thresholds"},
        "thresholds": thresholds or _thresholds((None, "green")),
        "unit": unit,
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    options = {
        "colorMode": "background",
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": "value",
        "wideLayout": True,
    }
    return _panel("stat", title, description, [query], width=width, height=height,
                  field_defaults=defaults, options=options)


def timeseries(title: str, description: str, queries: Sequence[Query], *,
               unit: str = "ops", width: int = 12, height: int = 8, bars: bool = False,
               stacked: bool = False, min_value: float | None = 0,
               max_value: float | None = None,
               colours: Iterable[tuple[str, str]] = ()) -> Json:
    """A graph over time; one series per label combination of its queries."""
    defaults: Json = {
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "bars" if bars else "line",
            "fillOpacity": 60 if bars else 10,
            "lineWidth": 1,
            "pointSize": 4,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if stacked else "none"},
        },
        "unit": unit,
    }
    if min_value is not None:
        defaults["min"] = min_value
    if max_value is not None:
        defaults["max"] = max_value
    options = {
        "legend": {"calcs": ["max", "lastNotNull"], "displayMode": "table",
                   "placement": "bottom", "showLegend": True, "sortBy": "Max",
                   "sortDesc": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return _panel("timeseries", title, description, queries, width=width, height=height,
                  field_defaults=defaults, options=options,
                  overrides=_colour_overrides(colours))


def bar_gauge(title: str, description: str, query: Query, *, unit: str = "short",
              width: int = 8, height: int = 8) -> Json:
    """Horizontal bars, one per series of an instant query (a ranking)."""
    defaults: Json = {
        "color": {"mode": "continuous-YlRd"},
        "decimals": 0,
        "min": 0,
        "thresholds": _thresholds((None, "green")),
        "unit": unit,
    }
    options = {
        "displayMode": "gradient",
        "maxVizHeight": 300,
        "minVizHeight": 16,
        "minVizWidth": 8,
        "namePlacement": "left",
        "orientation": "horizontal",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showUnfilled": True,
        "sizing": "auto",
        "valueMode": "color",
    }
    return _panel("bargauge", title, description, [query], width=width, height=height,
                  field_defaults=defaults, options=options)


def state_timeline(title: str, description: str, query: Query,
                   states: Sequence[tuple[int, str, str]], *, width: int = 24,
                   height: int = 8) -> Json:
    """Coloured bands over time; ``states`` maps each query value to a name and colour."""
    defaults: Json = {
        "color": {"mode": "thresholds"},
        "custom": {"fillOpacity": 80, "lineWidth": 0},
        "mappings": [{"options": {str(value): {"color": colour, "index": i, "text": text}
                                  for i, (value, text, colour) in enumerate(states)},
                      "type": "value"}],
        "thresholds": _thresholds((None, "text")),
    }
    options = {
        "alignValue": "left",
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "mergeValues": True,
        "rowHeight": 0.8,
        "showValue": "never",
        "tooltip": {"mode": "single", "sort": "none"},
    }
    return _panel("state-timeline", title, description, [query], width=width,
                  height=height, field_defaults=defaults, options=options)


def datasource_variable() -> Json:
    """The ``datasource`` variable every panel and query refers to."""
    return {
        "current": {},
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    }


def label_variable(name: str, label: str, metric: str) -> Json:
    """A multi-value variable over one label's values, with an ``All`` of ``.*``."""
    query = f"label_values({metric}, {name})"
    return {
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "datasource": dict(DATASOURCE),
        "definition": query,
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": query,
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


def task_variable() -> Json:
    """Celery task names seen by the runtime histogram."""
    return label_variable("task", "Task", "telemetry_guard_task_runtime_seconds_count")


def breaker_variable() -> Json:
    """Circuit breaker names seen by the state gauge."""
    return label_variable("breaker", "Breaker", "telemetry_guard_breaker_state")


def _laid_out(panels: Sequence[Json]) -> list[Json]:
    """Numbers the panels and places them left to right, wrapping at the grid width."""
    placed: list[Json] = []
    x = y = row_height = 0
    for panel_id, panel in enumerate(panels, start=1):
        pos = panel["gridPos"]
        if x + pos["w"] > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        placed.append({**panel, "id": panel_id,
                       "gridPos": {"h": pos["h"], "w": pos["w"], "x": x, "y": y}})
        x += pos["w"]
        row_height = max(row_height, pos["h"])
    return placed


def dashboard(uid: str, title: str, description: str, panels: Sequence[Json],
              variables: Sequence[Json]) -> Json:
    """A complete dashboard, ready to import or provision."""
    return {
        "annotations": {"list": []},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{"asDropdown": False, "icon": "external link", "includeVars": True,
                   "keepTime": True, "tags": [TAG], "targetBlank": False,
                   "title": "telemetry_guard", "tooltip": "", "type": "dashboards",
                   "url": ""}],
        "panels": _laid_out(panels),
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": [TAG],
        "templating": {"list": list(variables)},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# ---------------------------------------------------------------------------
# The dashboards (every PromQL expression lives below)

TASK = 'task=~"$task"'
BREAKER = 'breaker=~"$breaker"'


def tasks_dashboard() -> Json:
    """Failures, give-ups, exceptions, retries, runtime and success ratio per task."""
    failures = f"telemetry_guard_task_failures_total{{{TASK}}}"
    giveups = f"telemetry_guard_task_giveups_total{{{TASK}}}"
    runs = "telemetry_guard_task_runtime_seconds_count"
    buckets = f"telemetry_guard_task_runtime_seconds_bucket{{{TASK}}}"

    def finished_ratio(by: str) -> str:
        return (f'sum{by} (rate({runs}{{{TASK}, outcome="success"}}[$__rate_interval]))\n/\n'
                f'sum{by} (rate({runs}{{{TASK}, outcome=~"success|failure"}}'
                "[$__rate_interval]))")

    panels = [
        stat("Success ratio (finished runs)",
             "Share of finished runs of the selected tasks that succeeded, over the last "
             "rate window: successes / (successes + give-ups). Attempts that ended in a "
             "retry are not counted, so a task that succeeds on its second try counts as "
             "a success. Bad: below 99 % (yellow) or 95 % (red). Next: find the task in "
             "'Success ratio per task' and its exception in 'Top exceptions'.",
             Query(finished_ratio(""), "success ratio", instant=True),
             unit="percentunit", decimals=2,
             thresholds=_thresholds((None, "red"), (0.95, "yellow"), (0.99, "green"))),
        stat("Failed attempts / s",
             "Failed task attempts per second right now, retried or not (every exception "
             "a GuardedTask raised). Some is normal for flaky dependencies; a jump is not. "
             "Next: 'Failure rate by task and severity' shows which task it is.",
             Query(f"sum(rate({failures}[$__rate_interval])) or vector(0)", "failures/s",
                   instant=True),
             unit="ops", decimals=2,
             thresholds=_thresholds((None, "green"), (1, "yellow"))),
        stat("Give-ups in range",
             "Task runs abandoned in the selected time range: retries exhausted or the "
             "error was not retryable. Each one is work that did not happen and sits in "
             "the dead-letter stream (telemetry_guard:dead) for replay. Bad: any give-up "
             "of a task that must not lose work. Next: 'Give-up rate by task and "
             "severity', then the task.gave_up log events for the reason.",
             Query(f"sum(increase({giveups}[$__range])) or vector(0)", "give-ups",
                   instant=True),
             decimals=0, thresholds=_thresholds((None, "green"), (1, "orange"))),
        stat("Critical failures in range",
             "Failed attempts classified critical (e.g. MemoryError) in the selected time "
             "range. These are routed to Sentry and e-mail by default. Bad: anything "
             "above 0. Next: Sentry issues tagged severity=critical, and the "
             "'Notifications and telemetry health' dashboard to confirm the mails went out.",
             Query(f'sum(increase(telemetry_guard_task_failures_total{{{TASK}, '
                   f'severity="critical"}}[$__range])) or vector(0)',
                   "critical failures", instant=True),
             decimals=0, thresholds=_thresholds((None, "green"), (1, "red"))),
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


def breakers_dashboard() -> Json:
    """State, transitions and calls of every circuit breaker."""
    state = "telemetry_guard_breaker_state"
    calls = "telemetry_guard_breaker_calls_total"
    transitions = "telemetry_guard_breaker_transitions_total"
    state_value = (
        "max by (breaker) (\n"
        f'  0 * ({state}{{{BREAKER}, state="closed"}} == 1)\n'
        f'  or 1 * ({state}{{{BREAKER}, state="half_open"}} == 1)\n'
        f'  or 2 * ({state}{{{BREAKER}, state="open"}} == 1)\n'
        ")")
    panels = [
        stat("Breakers open now",
             "Breakers whose current state is open: calls through them are rejected with "
             "CircuitOpenError (or served by the task's fallback) until reset_timeout "
             "passes. Bad: anything above 0. Next: 'Breaker state' to see which and "
             "since when, then the health of that dependency.",
             Query(f'count(max by (breaker) ({state}{{{BREAKER}, state="open"}}) == 1) '
                   "or vector(0)", "open", instant=True),
             decimals=0, thresholds=_thresholds((None, "green"), (1, "red"))),
        stat("Breakers half-open now",
             "Breakers letting a few trial calls through to test whether the dependency "
             "recovered. Normal for a short while after an open period. Bad: a breaker "
             "that stays half-open or flips back to open again and again (see "
             "'Transitions').",
             Query(f'count(max by (breaker) ({state}{{{BREAKER}, state="half_open"}}) '
                   "== 1) or vector(0)", "half_open", instant=True),
             decimals=0, thresholds=_thresholds((None, "green"), (1, "yellow"))),
        stat("Rejected calls in range",
             "Calls refused by an open or saturated half-open breaker in the selected time "
             "range; the dependency was not called. Each one became a CircuitOpenError, a "
             "fallback result or a retry. Bad: large numbers for a breaker whose "
             "dependency is healthy again (check reset_timeout). Next: 'Rejected calls "
             "rate'.",
             Query(f'sum(increase({calls}{{{BREAKER}, outcome="rejected"}}[$__range])) '
                   "or vector(0)", "rejected", instant=True),
             decimals=0, thresholds=_thresholds((None, "green"), (1, "orange"))),
        stat("Trips to open in range",
             "How many times breakers moved to open in the selected time range. Bad: more "
             "than a handful: a flapping dependency, or a failure_threshold set too low. "
             "Next: 'Transitions by breaker' to see which breaker flaps.",
             Query(f'sum(increase({transitions}{{{BREAKER}, to_state="open"}}[$__range])) '
                   "or vector(0)", "trips", instant=True),
             decimals=0, thresholds=_thresholds((None, "green"), (1, "orange"))),
        state_timeline(
            "Breaker state",
            "Each breaker's state over time: green closed (calls pass), yellow half_open "
            "(trial calls), red open (calls rejected). Breaker state is shared in Redis, "
            "so every worker should agree; when they do not, the worst state is shown. "
            "Bad: long red bands, or rapid red/yellow flapping. Next: the dependency "
            "behind the breaker, and breaker.state_changed log events.",
            Query(state_value, "{{breaker}}"),
            [(0, "closed", "green"), (1, "half_open", "yellow"), (2, "open", "red")]),
        timeseries(
            "Transitions by breaker",
            "State changes per rate window, by breaker and direction (from → to). "
            "closed → open is a trip; open → half_open a recovery probe; half_open → "
            "closed a recovery; half_open → open a failed probe. Bad: repeated "
            "half_open → open (the dependency is still down) or many trips an hour "
            "(flapping).",
            [Query(f"sum by (breaker, from_state, to_state) "
                   f"(increase({transitions}{{{BREAKER}}}[$__rate_interval]))",
                   "{{breaker}}: {{from_state}} → {{to_state}}")],
            unit="short", bars=True),
        timeseries(
            "Rejected calls rate",
            "Calls per second refused by each breaker without calling the dependency. "
            "Non-zero exactly while a breaker is open (or half-open and full). Bad: "
            "rejections continuing after the dependency recovered, or on a breaker whose "
            "tasks have no fallback (those tasks fail). Next: 'Breaker state'.",
            [Query(f'sum by (breaker) (rate({calls}{{{BREAKER}, outcome="rejected"}}'
                   "[$__rate_interval]))", "{{breaker}}")]),
        timeseries(
            "Calls by outcome",
            "Calls per second through each breaker, by outcome: success, failure (the "
            "call raised an error that counts against the breaker) and rejected (not "
            "attempted). Bad: failure growing toward the trip threshold, or rejected "
            "replacing success. Next: 'Failure ratio of attempted calls'.",
            [Query(f"sum by (breaker, outcome) (rate({calls}{{{BREAKER}}}"
                   "[$__rate_interval]))", "{{breaker}} {{outcome}}")],
            colours=CALL_COLOURS),
        timeseries(
            "Failure ratio of attempted calls",
            "Per breaker, failures / (successes + failures) of the calls that reached the "
            "dependency. How close each breaker is to tripping, and how sick its "
            "dependency is. Bad: a sustained rise; at 100 % the breaker opens after "
            "failure_threshold calls. Next: the dependency's own dashboards and logs.",
            [Query(f'sum by (breaker) (rate({calls}{{{BREAKER}, outcome="failure"}}'
                   "[$__rate_interval]))\n/\n"
                   f'sum by (breaker) (rate({calls}{{{BREAKER}, outcome=~"success|failure"}}'
                   "[$__rate_interval]))", "{{breaker}}")],
            unit="percentunit", max_value=1),
    ]
    return dashboard(
        "telemetry-guard-breakers", "telemetry_guard / Circuit breakers",
        "State, transitions and calls of the circuit breakers shared through Redis.",
        panels, [datasource_variable(), breaker_variable()])


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
             decimals=0, thresholds=_thresholds((None, "green"), (1, "red"))),
        stat("Notifications throttled in range",
             "Mails suppressed in the selected time range because the same task and "
             "exception was mailed less than telemetry_guard_notification_throttle seconds "
             "ago; the next mail reports how many were held back. High numbers mean one "
             "failure repeating. Next: 'Top exceptions' on the tasks dashboard.",
             Query(f'sum(increase({notifications}{{outcome="throttled"}}[$__range])) '
                   "or vector(0)", "throttled", instant=True),
             decimals=0, thresholds=_thresholds((None, "green"), (100, "yellow"))),
        stat("Telemetry sink errors in range",
             "Failures inside telemetry sinks (log, metrics, tracing, error log, Sentry, "
             "e-mail) in the selected time range. Tasks were not affected, but some "
             "telemetry was lost. Bad: anything above 0. Next: 'Telemetry sink errors by "
             "sink', then the telemetry.sink_failed log events.",
             Query(f"sum(increase({errors}[$__range])) or vector(0)", "errors",
                   instant=True),
             decimals=0, thresholds=_thresholds((None, "green"), (1, "orange"))),
        stat("Retries refused by budget in range",
             "Retries refused by the fleet-wide retry budget in the selected time range; "
             "those runs were given up at once instead of retried, to protect a struggling "
             "dependency from a retry storm. Bad: any, unless an outage is under way. "
             "Next: 'Retry budget exhaustion by task'.",
             Query(f"sum(increase({budget}[$__range])) or vector(0)", "refused",
                   instant=True),
             decimals=0, thresholds=_thresholds((None, "green"), (1, "orange"))),
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


def dashboards() -> list[Json]:
    """Every dashboard, in a fixed order."""
    return [tasks_dashboard(), breakers_dashboard(), health_dashboard()]


def all_queries() -> list[tuple[str, str, str]]:
    """Every PromQL expression as ``(dashboard uid, panel title, expr)``.

    Expressions keep Grafana's template variables as Grafana writes them. To run one
    outside Grafana, replace them as text, in this order (``VARIABLE_SUBSTITUTIONS``):

    - ``$__rate_interval`` → ``5m``
    - ``$__range`` → ``1h``
    - ``$task`` → ``.*`` (always used as ``task=~"$task"``)
    - ``$breaker`` → ``.*`` (always used as ``breaker=~"$breaker"``)

    No other variable occurs. The variable queries (``label_values(...)``) are Grafana
    functions, not PromQL, and are not listed.
    """
    return [(board["uid"], panel["title"], target["expr"])
            for board in dashboards()
            for panel in board["panels"]
            for target in panel.get("targets", ())]


def substitute_variables(expr: str) -> str:
    """``expr`` with its template variables replaced as :func:`all_queries` documents."""
    for variable, value in VARIABLE_SUBSTITUTIONS:
        expr = expr.replace(variable, value)
    return expr


def render(board: Json) -> str:
    """The file text of one dashboard: pretty JSON, sorted keys, trailing newline."""
    return json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(out: Path) -> list[Path]:
    """Writes every dashboard to ``out/<uid>.json``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for board in dashboards():
        path = out / f"{board['uid']}.json"
        path.write_text(render(board), encoding="utf-8")
        paths.append(path)
    return paths


def stale(out: Path) -> list[Path]:
    """Files under ``out`` that are missing or differ from what :func:`write` would write."""
    outdated = []
    for board in dashboards():
        path = out / f"{board['uid']}.json"
        if not path.is_file() or path.read_text(encoding="utf-8") != render(board):
            outdated.append(path)
    return outdated


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: regenerate the dashboards, or check that they are up to date."""
    parser = argparse.ArgumentParser(
        prog="python -m telemetry_guard.dashboards",
        description="Write the telemetry_guard Grafana dashboards as JSON files.")
    parser.add_argument("--out", type=Path, default=Path("dashboards"),
                        help="directory to write <uid>.json files into (default: dashboards)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a file is missing or out of date")
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale(args.out)
        for path in outdated:
            print(f"out of date: {path}", file=sys.stderr)
        return 1 if outdated else 0
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
