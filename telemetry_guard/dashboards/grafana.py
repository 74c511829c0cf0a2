"""The Grafana JSON model: panels, template variables and a dashboard, built from plain data.

Plain dicts rather than ``grafana-foundation-sdk``: the SDK needs Python 3.11 while
this package supports 3.10. ``SCHEMA_VERSION`` is the one the SDK emits for Grafana 11.6.
Panels and queries use the data source only through the ``$datasource`` template variable
(``${datasource}``), never a data source uid, so the same files work in any Grafana that has
a Prometheus data source. Nothing here names a metric.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]

SCHEMA_VERSION = 41
TAG = "telemetry_guard"
DATASOURCE: Json = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False
    #: Table format (one row per label set), for a table panel's column.
    table: bool = False


@dataclass(frozen=True)
class Column:
    """One column of a table panel: an instant query's value per row, under ``title``."""

    title: str
    query: Query
    unit: str = "short"
    decimals: int | None = None
    #: Shown in a row the query has no value for (e.g. ``never``).
    missing: str = ""
    #: ``(value, text, colour)``: a cell showing ``value`` reads ``text`` on ``colour``.
    states: tuple[tuple[int, str, str], ...] = ()


def _target(query: Query, ref_id: str) -> Json:
    target = {
        "datasource": dict(DATASOURCE),
        "editorMode": "code",
        "expr": query.expr,
        "instant": query.instant,
        "legendFormat": query.legend or "__auto",
        "range": not query.instant,
        "refId": ref_id,
    }
    if query.table:
        target["format"] = "table"
    return target


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


def threshold_steps(*steps: tuple[float | None, str]) -> Json:
    """Absolute thresholds: ``(None, "green"), (1, "red")`` is green below 1, red from 1."""
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
        "thresholds": thresholds or threshold_steps((None, "green")),
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
        "thresholds": threshold_steps((None, "green")),
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
        "thresholds": threshold_steps((None, "text")),
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


def table(title: str, description: str, key: str, columns: Sequence[Column], *,
          sort_desc: str = "", width: int = 24, height: int = 10) -> Json:
    """One row per value of the label ``key``, one column per instant query, merged;
    rows by the column titled ``sort_desc``, highest first."""
    queries = [Query(c.query.expr, c.query.legend, instant=True, table=True) for c in columns]
    ref_ids = [chr(ord("A") + i) for i in range(len(columns))]
    overrides = [{"matcher": {"id": "byName", "options": column.title},
                  "properties": _column_properties(column)} for column in columns]
    defaults: Json = {
        "color": {"mode": "thresholds"},
        "custom": {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False},
        "thresholds": threshold_steps((None, "text")),
    }
    options: Json = {"cellHeight": "sm", "footer": {"show": False}, "showHeader": True}
    if sort_desc:
        options["sortBy"] = [{"desc": True, "displayName": sort_desc}]
    panel = _panel("table", title, description, queries, width=width, height=height,
                   field_defaults=defaults, options=options, overrides=overrides)
    panel["transformations"] = [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {
            "excludeByName": {"Time": True},
            "indexByName": {key: 0, **{f"Value #{ref}": i + 1 for i, ref in enumerate(ref_ids)}},
            "renameByName": {key: key.capitalize(),
                             **{f"Value #{ref}": c.title
                                for ref, c in zip(ref_ids, columns, strict=True)}},
        }},
    ]
    return panel


def _column_properties(column: Column) -> list[Json]:
    properties: list[Json] = [{"id": "unit", "value": column.unit}]
    if column.decimals is not None:
        properties.append({"id": "decimals", "value": column.decimals})
    mappings: list[Json] = []
    if column.states:
        mappings.append({"options": {str(value): {"color": colour, "index": i, "text": text}
                                     for i, (value, text, colour) in enumerate(column.states)},
                         "type": "value"})
        properties.append({"id": "custom.cellOptions",
                           "value": {"mode": "basic", "type": "color-background"}})
    if column.missing:
        mappings.append({"options": {"match": "null", "result": {
            "index": len(column.states), "text": column.missing}}, "type": "special"})
    if mappings:
        properties.append({"id": "mappings", "value": mappings})
    return properties


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


def render(board: Json) -> str:
    """The file text of one dashboard: pretty JSON, sorted keys, trailing newline."""
    return json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
