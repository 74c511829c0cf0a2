"""One dashboard made fit for a fleet: a variable per grouping label, every query narrowed by
them and the config's selector, links to the other dashboards and the runbooks, and
annotations for breaker transitions and give-up spikes read from the metrics themselves."""

from __future__ import annotations

import copy

from .config import MonitoringConfig
from .grafana import DATASOURCE, Json, label_variable
from .promql import select, variable_matchers

#: The series whose label values fill the grouping variables (every worker that ran a task).
GROUP_VARIABLE_METRIC = "telemetry_guard_task_runtime_seconds_count"


def for_fleet(board: Json, config: MonitoringConfig) -> Json:
    """``board`` (as the panel modules build it) for ``config``'s fleet."""
    board = copy.deepcopy(board)
    selector = [config.selector] if config.selector else []
    matchers = [*selector, *variable_matchers(config)]
    for panel in board["panels"]:
        for target in panel.get("targets", ()):
            target["expr"] = select(target["expr"], matchers)
    variables = board["templating"]["list"]
    outer: list[str] = list(selector)
    grouping = []
    for label in config.variables:
        variable = label_variable(label, label.replace("_", " ").capitalize(),
                                  select(GROUP_VARIABLE_METRIC, outer))
        outer.append(f'{label}=~"${label}"')
        grouping.append(variable)
    for variable in variables:  # the task and breaker variables: within the chosen groups
        if variable.get("type") == "query":
            variable["query"] = variable["definition"] = select(variable["query"], outer)
    board["templating"]["list"] = variables[:1] + grouping + variables[1:]
    board["links"].append({
        "asDropdown": False, "icon": "doc", "includeVars": False, "keepTime": False,
        "tags": [], "targetBlank": True, "title": "Runbooks", "tooltip": "",
        "type": "link", "url": config.runbook_url})
    board["annotations"]["list"] = annotations(matchers)
    return board


def annotations(matchers: list[str]) -> list[Json]:
    """Breaker transitions and give-up spikes, as Grafana annotations from Prometheus."""
    transitions = select("sum by (breaker, from_state, to_state) "
                         "(increase(telemetry_guard_breaker_transitions_total[$__interval])) "
                         "> 0", matchers)
    giveups = "sum by (task) (increase(telemetry_guard_task_giveups_total[5m]))"
    spike = select(f"{giveups} >= 5\nand\n{giveups} > 3 * sum by (task) "
                   "(increase(telemetry_guard_task_giveups_total[1h] offset 5m)) / 12",
                   matchers)
    return [
        {"datasource": dict(DATASOURCE), "enable": True, "expr": transitions,
         "hide": False, "iconColor": "orange", "name": "Breaker transitions",
         "step": "1m", "tagKeys": "breaker,to_state",
         "titleFormat": "{{breaker}}: {{from_state}} → {{to_state}}",
         "useValueForTime": False},
        {"datasource": dict(DATASOURCE), "enable": True, "expr": spike, "hide": False,
         "iconColor": "red", "name": "Give-up spikes", "step": "1m", "tagKeys": "task",
         "titleFormat": "{{task}}: give-ups spiking", "useValueForTime": False},
    ]
