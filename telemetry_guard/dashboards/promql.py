"""PromQL pieces the dashboards and the rules share: selectors and the labels kept.

Every series the guard exports is named ``telemetry_guard_*``; :func:`select` adds matchers
to each such selector in an expression (the config's selector, a dashboard's variables), and
:func:`by` and :func:`on` keep the config's grouping labels in every aggregation and match.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .config import MonitoringConfig

#: A selector of an exported series: its name and, if any, its ``{matchers}``.
_SERIES = re.compile(r"\b(telemetry_guard_[a-z_]+)(?![a-z_:(])(\{[^{}]*\})?")


def select(expr: str, matchers: Sequence[str]) -> str:
    """``expr`` with ``matchers`` (``'job="celery"'``, ...) added to every exported series."""
    extra = ", ".join(m for m in matchers if m)
    if not extra:
        return expr

    def add(match: re.Match[str]) -> str:
        inner = (match.group(2) or "{}")[1:-1].strip()
        return f"{match.group(1)}{{{extra}{', ' + inner if inner else ''}}}"

    return _SERIES.sub(add, expr)


def by(config: MonitoringConfig, *labels: str) -> str:
    """``by (<grouping labels>, <labels>)``."""
    return f"by ({', '.join(dict.fromkeys((*config.group_by, *labels)))})"


def on(config: MonitoringConfig, *labels: str) -> str:
    """``on(<grouping labels>, <labels>)``."""
    return f"on({', '.join(dict.fromkeys((*config.group_by, *labels)))})"


def variable_matchers(config: MonitoringConfig) -> list[str]:
    """A dashboard's matchers of its label variables, e.g. ``job=~"$job"``."""
    return [f'{label}=~"${label}"' for label in config.variables]
