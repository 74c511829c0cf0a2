"""Tests for alerts/: the rules pass promtool, their unit tests pass, Alertmanager's config
passes amtool, and every alert is documented, tested and built on the contract's names.

promtool and amtool are required (Debian packages `prometheus` and
`prometheus-alertmanager`): without them these tests fail, they never skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from telemetry_guard.dashboards.config import MonitoringConfig
from telemetry_guard.dashboards.rule_file import rule_file

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "alerts"
RULE_FILES = sorted(ALERTS.glob("*.rules.yml"))
RULE_TEST_FILES = sorted((ALERTS / "tests").glob("*.yml"))
ALERTMANAGER_CONFIG = ALERTS / "alertmanager.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_URL = "https://github.com/telemetry-guard/telemetry-guard/blob/main/docs/runbooks.md#"

TOOL_PACKAGES = {"promtool": "prometheus", "amtool": "prometheus-alertmanager"}

SEVERITIES = {"low", "medium", "high", "critical"}
BREAKER_STATES = {"closed", "open", "half_open"}
ANY = None  # a label whose values are not enumerated by the contract

#: "Telemetry names" in docs/telemetry.md: metric -> label -> allowed values (ANY: free).
CONTRACT: dict[str, dict[str, set[str] | None]] = {
    "telemetry_guard_task_failures_total": {"task": ANY, "exception": ANY, "severity": SEVERITIES},
    "telemetry_guard_task_retries_total": {"task": ANY, "exception": ANY},
    "telemetry_guard_task_giveups_total": {"task": ANY, "exception": ANY, "severity": SEVERITIES},
    "telemetry_guard_task_runtime_seconds": {
        "task": ANY, "outcome": {"success", "retry", "failure"}},
    "telemetry_guard_breaker_state": {"breaker": ANY, "state": BREAKER_STATES},
    "telemetry_guard_breaker_transitions_total": {
        "breaker": ANY, "from_state": BREAKER_STATES, "to_state": BREAKER_STATES},
    "telemetry_guard_breaker_calls_total": {
        "breaker": ANY, "outcome": {"success", "failure", "rejected"}},
    "telemetry_guard_retry_budget_exhausted_total": {"task": ANY},
    "telemetry_guard_notifications_total": {
        "channel": {"sentry", "email"}, "severity": SEVERITIES,
        "outcome": {"sent", "throttled", "failed"}},
    "telemetry_guard_telemetry_errors_total": {"sink": ANY},
    # Periodic monitoring (the periodic contract): one series per beat entry, and beat's own.
    **{f"telemetry_guard_periodic_{name}": {"task": ANY} for name in (
        "last_run_timestamp_seconds", "last_success_timestamp_seconds",
        "last_failure_timestamp_seconds", "expected_interval_seconds", "tolerance_ratio",
        "monitored_since_timestamp_seconds", "last_start_delay_seconds", "running",
        "overlaps_total", "missed_after_timestamp_seconds")},
    "telemetry_guard_beat_heartbeat_timestamp_seconds": {},
    "telemetry_guard_beat_heartbeat_interval_seconds": {},
}
HISTOGRAM_SUFFIXES = {"_bucket": {"le": ANY}, "_count": {}, "_sum": {}}

#: Series the rules read that users provide (documented in alerts/slo_objectives.rules.yml).
USER_INPUTS: dict[str, dict[str, set[str] | None]] = {
    "telemetry_guard:task_slo_objective": {"task": ANY},
}

#: Labels every scraped series carries besides its own.
TARGET_LABELS = {"job", "instance"}
#: Labels the committed rules keep in every aggregation (the generator's default config).
GROUP_LABELS = set(MonitoringConfig().group_by)

PROMQL_WORDS = {
    "and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "inf", "nan",
}


# -- A reader for the YAML our files use ------------------------------------------------
# The project does not depend on PyYAML; alerts/ sticks to block-style YAML (mappings,
# sequences, plain / quoted / block scalars, empty flow sequences), which this reads.
# Anything else raises, so a construct it does not know cannot be misread silently.

_KEY = re.compile(r"""^(?P<key>"[^"]*"|'[^']*'|[^\s#'"\[{&*!|>-][^:#]*?|-[^\s:#][^:#]*?)"""
                  r"""\s*:(?:\s+|$)(?P<rest>.*)$""")


def load_yaml(text: str) -> Any:
    """The document in ``text`` (block-style YAML subset), with every scalar a string."""
    lines = text.expandtabs().splitlines()
    start = _skip_blank(lines, 0)
    if start == len(lines):
        return None
    value, end = _node(lines, start, _indent(lines[start]))
    if _skip_blank(lines, end) != len(lines):
        raise ValueError(f"unparsed YAML from line {end + 1}: {lines[end]!r}")
    return value


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _skip_blank(lines: list[str], i: int) -> int:
    while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
        i += 1
    return i


def _is_item(line: str) -> bool:
    stripped = line.lstrip()
    return stripped == "-" or stripped.startswith("- ")


def _node(lines: list[str], i: int, indent: int) -> tuple[Any, int]:
    if _is_item(lines[i]):
        items: list[Any] = []
        while i < len(lines) and _indent(lines[i]) == indent and _is_item(lines[i]):
            rest = lines[i][indent + 1:].strip()
            if not rest:
                j = _skip_blank(lines, i + 1)
                value, i = _node(lines, j, _indent(lines[j]))
            elif _KEY.match(rest):
                lines[i] = " " * (indent + 2) + lines[i][indent + 2:]
                value, i = _node(lines, i, indent + 2)
            else:
                value, i = _scalar(rest, lines[i]), i + 1
            items.append(value)
            i = _skip_blank(lines, i)
        return items, i
    mapping: dict[str, Any] = {}
    while i < len(lines) and _indent(lines[i]) == indent and not _is_item(lines[i]):
        match = _KEY.match(lines[i].strip())
        if match is None:
            raise ValueError(f"not a mapping entry: {lines[i]!r}")
        key, rest = _scalar(match["key"], lines[i]), match["rest"].strip()
        if rest[:1] in ("|", ">"):
            mapping[key], i = _block_scalar(lines, i + 1, indent, rest)
        elif rest and not rest.startswith("#"):
            mapping[key], i = _scalar(rest, lines[i]), i + 1
        else:
            j = _skip_blank(lines, i + 1)
            nested = j < len(lines) and (
                _indent(lines[j]) > indent or (_indent(lines[j]) == indent and _is_item(lines[j])))
            mapping[key], i = _node(lines, j, _indent(lines[j])) if nested else (None, i + 1)
        i = _skip_blank(lines, i)
    return mapping, i


def _block_scalar(lines: list[str], i: int, indent: int, header: str) -> tuple[str, int]:
    if header.split("#")[0].strip() not in ("|", "|-", ">", ">-"):
        raise ValueError(f"unsupported block scalar header {header!r}")
    body: list[str] = []
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
        body.append(lines[i])
        i += 1
    while body and not body[-1].strip():
        body.pop()
    width = min((_indent(line) for line in body if line.strip()), default=0)
    body = [line[width:] for line in body]
    if header.startswith("|"):
        text = "\n".join(body)
    else:
        text = re.sub(r"(?<!\n)\n(?!\n)", " ", "\n".join(body)).replace("\n\n", "\n")
    return text + ("" if header.split("#")[0].strip().endswith("-") else "\n"), i


def _scalar(text: str, line: str) -> Any:
    text = text.strip()
    if text.startswith('"'):
        match = re.match(r'"((?:[^"\\]|\\.)*)"\s*(#.*)?$', text)
        if match is None:
            raise ValueError(f"unsupported double-quoted scalar: {line!r}")
        return json.loads(f'"{match[1]}"')
    if text.startswith("'"):
        match = re.match(r"'((?:[^']|'')*)'\s*(#.*)?$", text)
        if match is None:
            raise ValueError(f"unsupported single-quoted scalar: {line!r}")
        return match[1].replace("''", "'")
    if text.startswith("["):
        match = re.match(r"\[([^\[\]{}\"']*)\]\s*(#.*)?$", text)
        if match is None:
            raise ValueError(f"unsupported flow sequence: {line!r}")
        return [item.strip() for item in match[1].split(",") if item.strip()]
    if text[:1] in ("{", "&", "*", "!", "%", "@", "`"):
        raise ValueError(f"unsupported YAML construct: {line!r}")
    return re.sub(r"\s+#.*$", "", text)


# -- Helpers -----------------------------------------------------------------------------

def tool(name: str) -> str:
    """The path of promtool / amtool; fails (never skips) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        package = TOOL_PACKAGES[name]
        pytest.fail(f"{name} not found on PATH: install the Debian package {package} "
                    f"(apt-get install {package}); CI installs it", pytrace=False)
    return path


def run(*command: str) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root, capturing its output."""
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)


def assert_success(result: subprocess.CompletedProcess[str]) -> None:
    """The command exited 0; otherwise the failure shows its whole output."""
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")


def rule_groups() -> Iterator[dict[str, Any]]:
    """Every rule group of alerts/*.rules.yml."""
    for path in RULE_FILES:
        yield from load_yaml(path.read_text(encoding="utf-8"))["groups"]


def alerting_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def recorded_names() -> set[str]:
    return {rule["record"] for group in rule_groups() for rule in group["rules"]
            if "record" in rule}


def template_queries(template: str) -> list[str]:
    """The PromQL run by ``query`` in an annotation template (``%q`` filled in)."""
    return [json.loads(f'"{fmt}"').replace("%q", '"x"')
            for fmt in re.findall(r'printf\s+"((?:[^"\\]|\\.)*)"[^}]*\|\s*query', template)]


def rule_queries() -> Iterator[tuple[str, str]]:
    """(rule name, PromQL) for every expression and annotation query of the rules."""
    for group in rule_groups():
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            yield name, rule["expr"]
            for template in (rule.get("annotations") or {}).values():
                for query in template_queries(template):
                    yield name, query


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\boffset\s+-?\w+", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        if match[2] is None and match[1].lower() not in PROMQL_WORDS:
            names.add(match[1])
    return names


def selectors(expr: str) -> Iterator[tuple[str, str, str]]:
    """(metric, label, value) of every equality/regex matcher on a named metric."""
    for match in re.finditer(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", expr):
        for label, _op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"',
                                            match[2]):
            yield match[1], label, value


def known_labels(metric: str) -> dict[str, set[str] | None] | None:
    """The contract's labels of a metric (histogram series included), None if unknown."""
    if metric in CONTRACT:
        return CONTRACT[metric]
    for suffix, extra in HISTOGRAM_SUFFIXES.items():
        base = metric.removesuffix(suffix)
        if metric.endswith(suffix) and base in CONTRACT and base.endswith("_seconds"):
            return {**CONTRACT[base], **extra}
    return USER_INPUTS.get(metric)


def check_label(metric: str, label: str, value: str, extra: set[str]) -> list[str]:
    """Problems with one label of a series or matcher (empty: it keeps the contract)."""
    labels = known_labels(metric)
    if labels is None:
        if label == "task" or label in GROUP_LABELS:
            return []
        return [f"{metric}: recorded series only carry task and {sorted(GROUP_LABELS)}"]
    if label in extra and label not in labels:
        return []
    if label not in labels:
        return [f"{metric}: {label} is not one of its labels {sorted(labels)}"]
    allowed = labels[label]
    values = value.split("|") if re.fullmatch(r"[\w|]+", value) else [value]
    if allowed is not None and not set(values) <= allowed:
        return [f"{metric}{{{label}={value!r}}}: values are {sorted(allowed)}"]
    return []


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (code blocks excluded)."""
    markdown = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    anchors = set(re.findall(r'<a (?:id|name)="([^"]+)"', markdown))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", markdown, flags=re.M):
        text = re.sub(r"[`*_]", "", heading).strip().lower()
        anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


# -- The tools ---------------------------------------------------------------------------

def test_rule_files_pass_promtool_check() -> None:
    """`promtool check rules alerts/*.rules.yml` exits 0."""
    assert RULE_FILES, "no alerts/*.rules.yml"
    assert_success(run(tool("promtool"), "check", "rules", *map(str, RULE_FILES)))


def test_rule_unit_tests_pass() -> None:
    """`promtool test rules alerts/tests/*.yml` exits 0."""
    assert RULE_TEST_FILES, "no alerts/tests/*.yml"
    assert_success(run(tool("promtool"), "test", "rules", *map(str, RULE_TEST_FILES)))


def test_alertmanager_config_passes_amtool() -> None:
    """`amtool check-config alerts/alertmanager.yml` exits 0."""
    assert_success(run(tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG)))


@pytest.mark.parametrize(("severity", "receiver"),
                         [("critical", "oncall-pager"), ("warning", "team-chat")])
def test_alertmanager_routes_by_severity(severity: str, receiver: str) -> None:
    """Critical alerts go to the paging receiver, warnings to chat and mail."""
    assert_success(run(tool("amtool"), "config", "routes", "test",
                       f"--config.file={ALERTMANAGER_CONFIG}", f"--verify.receivers={receiver}",
                       "alertname=TelemetryGuardTest", "task=shop.charge",
                       f"severity={severity}"))


def test_alertmanager_yml_is_not_a_rule_file_of_the_glob() -> None:
    """The rule glob alerts/*.rules.yml leaves alertmanager.yml out (promtool rejects it)."""
    assert ALERTMANAGER_CONFIG not in RULE_FILES
    assert ALERTMANAGER_CONFIG.is_file()


# -- The rules ---------------------------------------------------------------------------

def test_yaml_reader_sees_every_rule() -> None:
    """The YAML reader finds as many alerts and records as the files declare."""
    text = "".join(path.read_text(encoding="utf-8") for path in RULE_FILES)
    code = re.sub(r"^\s*#.*$", "", text, flags=re.M)
    assert len(alerting_rules()) == len(re.findall(r"^\s*- alert:", code, flags=re.M))
    assert len(recorded_names()) == len(set(re.findall(r"^\s*- record:\s*(\S+)", code,
                                                       flags=re.M)))


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    """Each alert is TelemetryGuard<CamelCase>, severity critical|warning, fully annotated."""
    alerts = alerting_rules()
    assert alerts
    problems = []
    for rule in alerts:
        name = rule["alert"]
        if not re.fullmatch(r"TelemetryGuard(?:[A-Z][a-z0-9]*|[A-Z]+(?=[A-Z]|$))+", name):
            problems.append(f"{name}: not CamelCase with the TelemetryGuard prefix")
        if (rule.get("labels") or {}).get("severity") not in ("critical", "warning"):
            problems.append(f"{name}: severity label must be critical or warning")
        annotations = rule.get("annotations") or {}
        for key in ("summary", "description", "runbook_url"):
            if not str(annotations.get(key) or "").strip():
                problems.append(f"{name}: no {key} annotation")
        if "for" not in rule:
            problems.append(f"{name}: no for: duration")
    assert not problems, "\n".join(problems)


def test_every_runbook_url_has_its_own_section_in_docs_runbooks() -> None:
    """runbook_url is the repository's runbooks.md#<anchor>, one per alert, and it exists."""
    anchors = github_anchors(RUNBOOKS.read_text(encoding="utf-8"))
    seen: dict[str, str] = {}
    problems = []
    for rule in alerting_rules():
        url = (rule.get("annotations") or {}).get("runbook_url", "")
        if not url.startswith(RUNBOOK_URL):
            problems.append(f"{rule['alert']}: runbook_url {url!r} is not {RUNBOOK_URL}<anchor>")
            continue
        anchor = url.removeprefix(RUNBOOK_URL)
        if anchor in seen:
            problems.append(f"{rule['alert']}: anchor #{anchor} already used by {seen[anchor]}")
        seen[anchor] = rule["alert"]
        if anchor not in anchors:
            problems.append(f"{rule['alert']}: docs/runbooks.md has no section #{anchor}")
    assert not problems, "\n".join(problems)


def test_rules_use_only_contract_metrics_or_recorded_ones() -> None:
    """Every metric in an expression or annotation query is a contract name or recorded here."""
    allowed = set(CONTRACT) | set(USER_INPUTS) | recorded_names() | {
        base + suffix for base in CONTRACT if base.endswith("_seconds")
        for suffix in HISTOGRAM_SUFFIXES}
    problems = [f"{name}: {metric} is neither in the contract nor recorded in alerts/"
                for name, expr in rule_queries() for metric in sorted(metric_names(expr))
                if metric not in allowed]
    assert not problems, "\n".join(problems)
    used = {metric for _, expr in rule_queries() for metric in metric_names(expr)}
    assert "telemetry_guard_task_giveups_total" in used  # the extraction works at all


def test_rule_matchers_use_contract_labels_and_values() -> None:
    """Label matchers name the metric's own labels, with values the contract allows."""
    problems = [f"{name}: {problem}" for name, expr in rule_queries()
                for metric, label, value in selectors(expr)
                for problem in check_label(metric, label, value, GROUP_LABELS)]
    assert not problems, "\n".join(problems)


def test_rule_unit_tests_feed_contract_series() -> None:
    """The series the unit tests feed in are contract (or documented input) series."""
    problems = []
    for path in RULE_TEST_FILES:
        for case in load_yaml(path.read_text(encoding="utf-8"))["tests"]:
            for series in case.get("input_series") or []:
                match = re.fullmatch(r"([A-Za-z_:][\w:]*)\{(.*)\}", series["series"])
                assert match, f"{path.name}: unreadable series {series['series']!r}"
                metric = match[1]
                if known_labels(metric) is None:
                    problems.append(f"{path.name}: {metric} is not a contract series")
                    continue
                for label, value in re.findall(r'(\w+)="([^"]*)"', match[2]):
                    problems += [f"{path.name}: {problem}" for problem in
                                 check_label(metric, label, value, TARGET_LABELS)]
    assert not problems, "\n".join(problems)


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    """alerts/tests/ has, for each alert, a case where it fires and one where it does not."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TEST_FILES:
        for case in load_yaml(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test") or []:
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerting_rules()}
    assert not names - firing, f"never tested firing: {sorted(names - firing)}"
    assert not names - quiet, f"never tested quiet: {sorted(names - quiet)}"


def test_fired_alerts_are_checked_with_full_labels_and_annotations() -> None:
    """Every expected alert in alerts/tests/ lists severity and all three annotations."""
    problems = []
    for path in RULE_TEST_FILES:
        for case in load_yaml(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test") or []:
                for alert in check.get("exp_alerts") or []:
                    where = f"{path.name}: {case['name']}: {check['alertname']}"
                    if "severity" not in (alert.get("exp_labels") or {}):
                        problems.append(f"{where}: no severity in exp_labels")
                    missing = {"summary", "description", "runbook_url"} - set(
                        alert.get("exp_annotations") or {})
                    if missing:
                        problems.append(f"{where}: exp_annotations lack {sorted(missing)}")
    assert not problems, "\n".join(problems)


def test_the_per_task_slo_override_is_unit_tested() -> None:
    """A unit test feeds telemetry_guard:task_slo_objective (the per-task SLO override)."""
    text = "".join(path.read_text(encoding="utf-8") for path in RULE_TEST_FILES)
    assert "'telemetry_guard:task_slo_objective{" in text


# -- A generated variant: selector and grouping labels -----------------------------------

VARIANT = MonitoringConfig(selector='job=~"celery-.*"', group_by=("cluster", "namespace", "job"))


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}",
            "values": values}


def test_a_variant_with_a_selector_and_grouping_labels_passes_promtool(tmp_path: Path) -> None:
    """Rules generated for `selector: job=~"celery-.*"`, `group_by: [cluster, namespace, job]`
    pass `promtool check rules`, and `promtool test rules` shows them alerting per cluster
    and never for a job the selector leaves out."""
    (tmp_path / "telemetry_guard.rules.yml").write_text(rule_file(VARIANT), encoding="utf-8")
    (tmp_path / "slo_objectives.rules.yml").write_text(
        (ALERTS / "slo_objectives.rules.yml").read_text(encoding="utf-8"), encoding="utf-8")
    assert_success(run(tool("promtool"), "check", "rules",
                       str(tmp_path / "telemetry_guard.rules.yml")))
    eu = {"cluster": "eu", "namespace": "shop", "job": "celery-payments", "instance": "w1:9808"}
    us = {**eu, "cluster": "us"}
    batch = {**eu, "job": "batch", "instance": "w9:9808"}  # not selected
    series = []
    for where, giveups, state in ((eu, 12, "open"), (us, 0, "closed"), (batch, 60, "open")):
        series += [
            _series("telemetry_guard_task_runtime_seconds_count",
                    {**where, "task": "shop.charge", "outcome": "success"}, f"0+{60 - giveups}x90"),
            _series("telemetry_guard_task_giveups_total",
                    {**where, "task": "shop.charge", "exception": "ConnectionError",
                     "severity": "high"}, f"0+{giveups}x90"),
            *(_series("telemetry_guard_breaker_state", {**where, "breaker": "payments-api",
                                                         "state": name},
                      f"{int(name == state)}x90") for name in ("closed", "open", "half_open")),
        ]
    firing = 'ALERTS{{alertname="{}",alertstate="firing",cluster="eu",namespace="shop",' \
             'job="celery-payments",{}}}'
    unit = {
        "rule_files": ["telemetry_guard.rules.yml", "slo_objectives.rules.yml"],
        "evaluation_interval": "1m",
        "group_eval_order": ["telemetry_guard_slo_objectives", "telemetry_guard_sli",
                             "telemetry_guard_retries", "telemetry_guard_alerts"],
        "tests": [{"name": "per cluster, selected jobs only", "interval": "1m",
                   "input_series": series, "promql_expr_test": [
                       {"expr": 'ALERTS{alertname="TelemetryGuardErrorBudgetFastBurn",'
                                'alertstate="firing"}', "eval_time": "70m",
                        "exp_samples": [{"labels": firing.format(
                            "TelemetryGuardErrorBudgetFastBurn",
                            'task="shop.charge",severity="critical"'), "value": 1}]},
                       {"expr": 'ALERTS{alertname="TelemetryGuardBreakerOpen",'
                                'alertstate="firing"}', "eval_time": "20m",
                        "exp_samples": [{"labels": firing.format(
                            "TelemetryGuardBreakerOpen",
                            'breaker="payments-api",severity="warning"'), "value": 1}]}]}],
    }
    (tmp_path / "variant_test.yml").write_text(json.dumps(unit, indent=1), encoding="utf-8")
    assert_success(run(tool("promtool"), "test", "rules", str(tmp_path / "variant_test.yml")))


def test_a_variant_holds_back_periodic_alerts_only_where_beat_is_down(tmp_path: Path) -> None:
    """With `group_by: [cluster, namespace, job]`, beat down in one cluster holds back that
    cluster's missed task only: the same task missed in another cluster, whose beat is up,
    still fires, and beat down fires for the first cluster alone."""
    (tmp_path / "telemetry_guard.rules.yml").write_text(rule_file(VARIANT), encoding="utf-8")
    eu = {"cluster": "eu", "namespace": "shop", "job": "celery-payments", "instance": "w1:9808"}
    us = {**eu, "cluster": "us"}
    series = []
    for where, heartbeat in ((eu, "0 60 120x30"), (us, "0+60x32")):
        task = {**where, "task": "shop.report"}
        series += [
            _series("telemetry_guard_beat_heartbeat_timestamp_seconds", where, heartbeat),
            _series("telemetry_guard_beat_heartbeat_interval_seconds", where, "10x32"),
            _series("telemetry_guard_periodic_last_run_timestamp_seconds", task, "0x32"),
            _series("telemetry_guard_periodic_monitored_since_timestamp_seconds", task, "0x32"),
            _series("telemetry_guard_periodic_expected_interval_seconds", task, "60x32"),
            _series("telemetry_guard_periodic_tolerance_ratio", task, "1.5x32"),
        ]
    firing = ('ALERTS{{alertname="{}",alertstate="firing",cluster="{}",namespace="shop",'
              'job="celery-payments",severity="critical"{}}}')
    unit = {
        "rule_files": ["telemetry_guard.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{"name": "beat down per cluster", "interval": "1m", "input_series": series,
                   "promql_expr_test": [
                       {"expr": 'ALERTS{alertname="TelemetryGuardPeriodicTaskMissed",'
                                'alertstate="firing"}', "eval_time": "15m",
                        "exp_samples": [{"labels": firing.format(
                            "TelemetryGuardPeriodicTaskMissed", "us", ',task="shop.report"'),
                            "value": 1}]},
                       {"expr": 'ALERTS{alertname="TelemetryGuardBeatDown",'
                                'alertstate="firing"}', "eval_time": "15m",
                        "exp_samples": [{"labels": firing.format(
                            "TelemetryGuardBeatDown", "eu", ""), "value": 1}]}]}],
    }
    (tmp_path / "variant_test.yml").write_text(json.dumps(unit, indent=1), encoding="utf-8")
    assert_success(run(tool("promtool"), "test", "rules", str(tmp_path / "variant_test.yml")))
