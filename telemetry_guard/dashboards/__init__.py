"""Grafana dashboards and Prometheus rules for the telemetry_guard metrics, generated from
plain Python data and one config.

``python -m telemetry_guard.dashboards [--config FILE] [--check]`` writes (or, with
``--check``, compares) one JSON file per dashboard (``dashboards/<uid>.json``), the rule
file (``alerts/telemetry_guard.rules.yml``) and their Kubernetes manifests
(``deploy/kubernetes/``: a ``PrometheusRule`` and a Grafana dashboards ``ConfigMap``). The
committed copies are the output for the default config.

- :mod:`.config`: the config (selector, grouping labels, runbook and dashboard URLs).
- :mod:`.promql`: selectors and grouping shared by dashboards and rules.
- :mod:`.fleet`: a dashboard made fit for a fleet (variables, links, annotations).
- :mod:`.rules`: the recording and alerting rules (:mod:`.periodic_rules`: those of periodic
  tasks and beat; :mod:`.rule_model`: a rule as data); :mod:`.rule_file`: their file.
- :mod:`.kubernetes`: the manifests.

- :mod:`.grafana`: the Grafana JSON model (panels, variables, a dashboard); no metric names.
- :mod:`.labels`: the task and breaker variables and selectors, colours of label values.
- :mod:`.tasks`, :mod:`.breakers`, :mod:`.health`, :mod:`.periodic`: the four dashboards.
  Every PromQL expression of every panel is written in these modules and nowhere else, but
  the periodic states, written once in :mod:`.periodic_promql` for the periodic dashboard
  and the periodic alerts; :func:`all_queries` lists them.
- :mod:`.catalog`: the dashboards in order, :func:`all_queries`, :func:`substitute_variables`.
- :mod:`.writer`: the files (:func:`write`, :func:`stale`) and :func:`main`.
"""

from .breakers import breakers_dashboard
from .catalog import VARIABLE_SUBSTITUTIONS, all_queries, dashboards, substitute_variables
from .grafana import (
    DATASOURCE,
    SCHEMA_VERSION,
    TAG,
    Column,
    Json,
    Query,
    bar_gauge,
    dashboard,
    datasource_variable,
    label_variable,
    stat,
    state_timeline,
    table,
    timeseries,
)
from .health import health_dashboard
from .labels import breaker_variable, periodic_task_variable, task_variable
from .periodic import periodic_dashboard
from .tasks import tasks_dashboard
from .writer import main, render, stale, write

__all__ = [
    "DATASOURCE",
    "SCHEMA_VERSION",
    "TAG",
    "VARIABLE_SUBSTITUTIONS",
    "Column",
    "Json",
    "Query",
    "all_queries",
    "bar_gauge",
    "breaker_variable",
    "breakers_dashboard",
    "dashboard",
    "dashboards",
    "datasource_variable",
    "health_dashboard",
    "label_variable",
    "main",
    "periodic_dashboard",
    "periodic_task_variable",
    "render",
    "stale",
    "stat",
    "state_timeline",
    "substitute_variables",
    "table",
    "task_variable",
    "tasks_dashboard",
    "timeseries",
    "write",
]
