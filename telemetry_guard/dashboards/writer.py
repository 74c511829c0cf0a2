"""Writing the dashboards, the rules and their Kubernetes manifests as files, checking them,
and the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .catalog import dashboards
from .config import MonitoringConfig
from .grafana import render
from .kubernetes import dashboards_configmap, prometheus_rule, render_yaml
from .rule_file import as_mappings, rule_file

__all__ = ["RULES_FILE", "main", "outputs", "render", "stale", "write"]

#: The generated rule file, under the alerts directory.
RULES_FILE = "telemetry_guard.rules.yml"
#: The generated manifests, under the Kubernetes directory.
RULE_MANIFEST, DASHBOARDS_MANIFEST = "prometheus-rule.yaml", "grafana-dashboards.yaml"


def outputs(config: MonitoringConfig, out: Path, alerts: Path | None = None,
            kubernetes: Path | None = None) -> dict[Path, str]:
    """Every generated file's path and text: ``out/<uid>.json`` per dashboard; when
    ``alerts`` is given, ``alerts/telemetry_guard.rules.yml``; when ``kubernetes`` is given,
    a ``PrometheusRule`` and a Grafana dashboards ``ConfigMap`` of the same content."""
    boards = dashboards(config)
    files = {out / f"{board['uid']}.json": render(board) for board in boards}
    if alerts is not None:
        files[alerts / RULES_FILE] = rule_file(config)
    if kubernetes is not None:
        files[kubernetes / RULE_MANIFEST] = render_yaml(prometheus_rule(as_mappings(config)))
        files[kubernetes / DASHBOARDS_MANIFEST] = render_yaml(dashboards_configmap(boards))
    return files


def write(out: Path, alerts: Path | None = None, config: MonitoringConfig | None = None,
          kubernetes: Path | None = None) -> list[Path]:
    """Writes the files of :func:`outputs`; returns the paths written."""
    paths = []
    for path, text in outputs(config or MonitoringConfig(), out, alerts, kubernetes).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def stale(out: Path, alerts: Path | None = None, config: MonitoringConfig | None = None,
          kubernetes: Path | None = None) -> list[Path]:
    """Files that are missing or differ from what :func:`write` would write."""
    files = outputs(config or MonitoringConfig(), out, alerts, kubernetes)
    return [path for path, text in files.items()
            if not path.is_file() or path.read_text(encoding="utf-8") != text]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: regenerate the dashboards and rules, or check that they are current."""
    parser = argparse.ArgumentParser(
        prog="python -m telemetry_guard.dashboards",
        description="Write the telemetry_guard Grafana dashboards (JSON) and Prometheus "
                    "rules (YAML), from one config.")
    parser.add_argument("--out", type=Path, default=Path("dashboards"),
                        help="directory to write <uid>.json files into (default: dashboards)")
    parser.add_argument("--alerts", type=Path, default=Path("alerts"),
                        help=f"directory to write {RULES_FILE} into (default: alerts)")
    parser.add_argument("--kubernetes", type=Path, default=Path("deploy/kubernetes"),
                        help=f"directory to write {RULE_MANIFEST} and {DASHBOARDS_MANIFEST} "
                             "into (default: deploy/kubernetes)")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML or JSON: selector, group_by, dashboard_labels, "
                             "runbook_url, dashboard_url (default: the committed files')")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a file is missing or out of date")
    args = parser.parse_args(argv)
    try:
        config = MonitoringConfig.load(args.config) if args.config else MonitoringConfig()
    except (OSError, ValueError) as exc:
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        outdated = stale(args.out, args.alerts, config, args.kubernetes)
        for path in outdated:
            print(f"out of date: {path}", file=sys.stderr)
        return 1 if outdated else 0
    for path in write(args.out, args.alerts, config, args.kubernetes):
        print(path)
    return 0
