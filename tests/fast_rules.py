"""The generated rule file with every non-zero ``for:`` cut short, so a private Prometheus
fires the alerts within seconds of their conditions."""

from __future__ import annotations

from telemetry_guard.dashboards.config import MonitoringConfig
from telemetry_guard.dashboards.rule_file import rule_file
from telemetry_guard.dashboards.rules import rule_groups

TEST_FOR = "1s"


def rule_files_with_short_for(duration: str = TEST_FOR) -> dict[str, str]:
    """The generated rule file for the default config, every non-zero ``for:`` ``duration``."""
    config = MonitoringConfig()
    groups = rule_groups(config)
    for group in groups:
        for rule in group.rules:
            if rule.alert and rule.for_ not in ("0m", "0s"):
                rule.for_ = duration
    return {"telemetry_guard.rules.yml": rule_file(config, groups)}
