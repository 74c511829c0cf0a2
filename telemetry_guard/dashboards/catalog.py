"""The dashboards in their fixed order, and every PromQL expression they hold."""

from __future__ import annotations

from .breakers import breakers_dashboard
from .config import MonitoringConfig
from .fleet import for_fleet
from .grafana import Json
from .health import health_dashboard
from .periodic import periodic_dashboard
from .tasks import tasks_dashboard

#: How the template variables used in :func:`all_queries` can be replaced to run the
#: expressions outside Grafana (plain text substitution, in this order).
VARIABLE_SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    ("$__rate_interval", "5m"),
    ("$__range", "1h"),
    ("$task", ".*"),
    ("$breaker", ".*"),
    ("$cluster", ".*"),
    ("$namespace", ".*"),
    ("$job", ".*"),
)


def dashboards(config: MonitoringConfig | None = None) -> list[Json]:
    """Every dashboard for ``config`` (default: the committed files'), in a fixed order."""
    config = config or MonitoringConfig()
    return [for_fleet(board, config)
            for board in (tasks_dashboard(), breakers_dashboard(), health_dashboard(),
                          periodic_dashboard())]


def all_queries() -> list[tuple[str, str, str]]:
    """Every PromQL expression as ``(dashboard uid, panel title, expr)``.

    Expressions keep Grafana's template variables as Grafana writes them. To run one
    outside Grafana, replace them as text, in this order (``VARIABLE_SUBSTITUTIONS``):

    - ``$__rate_interval`` → ``5m``
    - ``$__range`` → ``1h``
    - ``$task`` → ``.*`` (always used as ``task=~"$task"``)
    - ``$breaker`` → ``.*`` (always used as ``breaker=~"$breaker"``)
    - ``$cluster``, ``$namespace``, ``$job`` → ``.*`` (the grouping variables)

    No other variable occurs (with the default config). The variable queries
    (``label_values(...)``) are Grafana functions, not PromQL, and are not listed.
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
