"""What a fleet changes in the generated dashboards and rules: selector, grouping, links.

A config file (YAML or JSON) holds any of::

    selector: 'job="celery"'            # extra matchers on every series read
    group_by: [cluster, namespace, job]  # labels every aggregation and alert keeps
    dashboard_labels: [cluster, namespace]  # more dashboard variables (may be absent)
    runbook_url: https://wiki.example/telemetry-guard/runbooks.md
    dashboard_url: https://grafana.example

The defaults are what the committed files hold: group by ``job``; ``cluster`` and
``namespace`` as optional dashboard variables (a series without them matches ``All``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

#: Where the runbooks live unless the config says otherwise.
RUNBOOK_URL = "https://github.com/telemetry-guard/telemetry-guard/blob/main/docs/runbooks.md"
#: The Grafana of the compose stack (docker-compose.yml).
DASHBOARD_URL = "http://localhost:3000"
#: Labels the metrics themselves carry: a grouping label may not be one of them.
METRIC_LABELS = frozenset({"task", "exception", "severity", "outcome", "breaker", "state",
                           "from_state", "to_state", "channel", "sink", "le"})
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_MATCHER = re.compile(r'\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*')


@dataclass(frozen=True)
class MonitoringConfig:
    """The generator's settings; see the module's docstring."""

    selector: str = ""
    group_by: tuple[str, ...] = ("job",)
    dashboard_labels: tuple[str, ...] = ("cluster", "namespace")
    runbook_url: str = RUNBOOK_URL
    dashboard_url: str = DASHBOARD_URL

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "group_by", _labels("group_by", self.group_by))
        set_(self, "dashboard_labels", _labels("dashboard_labels", self.dashboard_labels))
        selector = self.selector.strip().strip("{}").strip()
        for part in _split_matchers(selector):
            if not _MATCHER.fullmatch(part):
                raise ValueError(f"selector: {part!r} is not a label matcher such as "
                                 'job="celery"')
        set_(self, "selector", selector)
        for name in ("runbook_url", "dashboard_url"):
            set_(self, name, str(getattr(self, name)).rstrip("/"))

    @property
    def variables(self) -> tuple[str, ...]:
        """The dashboard variables of the grouping and optional labels, outermost first."""
        return tuple(dict.fromkeys((*self.dashboard_labels, *self.group_by)))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> MonitoringConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(known))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    @classmethod
    def load(cls, path: Path) -> MonitoringConfig:
        """The config in a YAML or JSON file."""
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            values = json.loads(text)
        else:
            import yaml
            values = yaml.safe_load(text) or {}
        if not isinstance(values, Mapping):
            raise ValueError(f"{path}: a config is a mapping of settings")
        return cls.from_mapping(values)


def _labels(name: str, values: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [v for v in re.split(r"[,\s]+", values) if v]
    for value in values:
        if not isinstance(value, str) or not _LABEL.fullmatch(value):
            raise ValueError(f"{name}: {value!r} is not a label name")
        if value in METRIC_LABELS:
            raise ValueError(f"{name}: {value!r} is a label of the metrics themselves")
    return tuple(dict.fromkeys(values))


def _split_matchers(selector: str) -> list[str]:
    """``a="x", b=~"y,z"`` as its matchers (commas inside quotes kept)."""
    parts, current, quoted, escaped = [], "", False, False
    for char in selector:
        if char == "," and not quoted:
            parts.append(current)
            current = ""
            continue
        current += char
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
    if current.strip():
        parts.append(current)
    return [p for p in parts if p.strip()]
