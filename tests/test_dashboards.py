"""Tests for telemetry_guard.dashboards and the committed dashboards/*.json files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from telemetry_guard import dashboards
from telemetry_guard.dashboards.config import MonitoringConfig

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
UIDS = {"telemetry-guard-tasks", "telemetry-guard-breakers", "telemetry-guard-health",
        "telemetry-guard-periodic"}

# The contract ("Telemetry names" in DESIGN.md), written out here on purpose: the test
# must fail when the generator and the contract drift apart.
CONTRACT_METRICS = {
    "telemetry_guard_task_failures_total",
    "telemetry_guard_task_retries_total",
    "telemetry_guard_task_giveups_total",
    "telemetry_guard_breaker_state",
    "telemetry_guard_breaker_transitions_total",
    "telemetry_guard_breaker_calls_total",
    "telemetry_guard_retry_budget_exhausted_total",
    "telemetry_guard_notifications_total",
    "telemetry_guard_telemetry_errors_total",
} | {f"telemetry_guard_task_runtime_seconds_{suffix}" for suffix in ("bucket", "count", "sum")}
# Periodic monitoring (issue 16): one series per beat entry, and beat's heartbeat.
PERIODIC_METRICS = {
    "telemetry_guard_periodic_last_run_timestamp_seconds",
    "telemetry_guard_periodic_last_success_timestamp_seconds",
    "telemetry_guard_periodic_last_failure_timestamp_seconds",
    "telemetry_guard_periodic_expected_interval_seconds",
    "telemetry_guard_periodic_tolerance_ratio",
    "telemetry_guard_periodic_monitored_since_timestamp_seconds",
    "telemetry_guard_periodic_missed_after_timestamp_seconds",
    "telemetry_guard_periodic_last_start_delay_seconds",
    "telemetry_guard_periodic_running",
    "telemetry_guard_periodic_overlaps_total",
    "telemetry_guard_beat_heartbeat_timestamp_seconds",
    "telemetry_guard_beat_heartbeat_interval_seconds",
}
CONTRACT_METRICS |= PERIODIC_METRICS

# What the brief (and all_queries' docstring) promises for running exprs outside Grafana.
SUBSTITUTIONS = {"$__rate_interval": "5m", "$__range": "1h", "$task": ".*", "$breaker": ".*",
                 "$cluster": ".*", "$namespace": ".*", "$job": ".*"}
#: The grouping variables' matchers the default config puts on every series.
FLEET = 'cluster=~"$cluster", namespace=~"$namespace", job=~"$job"'


def without_fleet(expr: str) -> str:
    """``expr`` without the grouping variables' matchers (to compare with the panel modules)."""
    return expr.replace(FLEET + ", ", "").replace("{" + FLEET + "}", "")

PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def committed_boards() -> dict[str, dict[str, Any]]:
    """The committed dashboards by file name."""
    return {path.name: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(COMMITTED.glob("*.json"))}


def board(uid: str) -> dict[str, Any]:
    """The committed dashboard with this uid."""
    data: dict[str, Any] = json.loads((COMMITTED / f"{uid}.json").read_text(encoding="utf-8"))
    return data


def panels() -> Iterator[tuple[str, dict[str, Any]]]:
    """(dashboard uid, panel) for every panel of every committed dashboard."""
    for data in committed_boards().values():
        for panel in data["panels"]:
            yield data["uid"], panel


def variables(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A dashboard's template variables by name."""
    return {v["name"]: v for v in data["templating"]["list"]}


def walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) for every key of every object in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)       # string literals
    text = re.sub(r"\{[^}]*\}", "{}", text)                # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)               # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ",
                  text)                                    # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.$:])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, is_call = match.group(1), match.group(2)
        if not is_call and word.lower() not in PROMQL_KEYWORDS:
            names.add(word)
    return names


def substituted(expr: str) -> str:
    """``expr`` with Grafana's variables replaced as the brief documents."""
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    return expr


def test_regenerating_gives_byte_identical_files(tmp_path: Path) -> None:
    """python -m telemetry_guard.dashboards reproduces dashboards/*.json,
    alerts/telemetry_guard.rules.yml and deploy/kubernetes/*.yaml byte for byte (the
    default config)."""
    alerts, kubernetes = tmp_path / "alerts", tmp_path / "kubernetes"
    assert dashboards.main(["--out", str(tmp_path), "--alerts", str(alerts),
                            "--kubernetes", str(kubernetes)]) == 0
    generated = sorted(p.name for p in tmp_path.glob("*.json"))
    assert generated == sorted(p.name for p in COMMITTED.glob("*.json"))
    for name in generated:
        assert (tmp_path / name).read_bytes() == (COMMITTED / name).read_bytes(), (
            f"dashboards/{name} is out of date: run python -m telemetry_guard.dashboards")
    rules = REPO / "alerts" / "telemetry_guard.rules.yml"
    assert (alerts / rules.name).read_bytes() == rules.read_bytes(), (
        "alerts/telemetry_guard.rules.yml is out of date: run python -m telemetry_guard.dashboards")
    for manifest in ("prometheus-rule.yaml", "grafana-dashboards.yaml"):
        committed = REPO / "deploy" / "kubernetes" / manifest
        assert (kubernetes / manifest).read_bytes() == committed.read_bytes(), (
            f"deploy/kubernetes/{manifest} is out of date: run python -m "
            "telemetry_guard.dashboards")


def test_check_mode_fails_on_missing_or_edited_files(tmp_path: Path) -> None:
    """--check exits 1 for an empty or edited directory and 0 for a fresh one."""
    out = ["--out", str(tmp_path), "--alerts", str(tmp_path / "alerts"),
           "--kubernetes", str(tmp_path / "kubernetes")]
    assert dashboards.main([*out, "--check"]) == 1
    dashboards.main(out)
    assert dashboards.main([*out, "--check"]) == 0
    path = tmp_path / "telemetry-guard-tasks.json"
    path.write_text(path.read_text(encoding="utf-8").replace("Task", "Job"), encoding="utf-8")
    assert dashboards.main([*out, "--check"]) == 1
    dashboards.main(out)
    rules = tmp_path / "alerts" / "telemetry_guard.rules.yml"
    rules.write_text(rules.read_text(encoding="utf-8").replace("14.4", "14"), encoding="utf-8")
    assert dashboards.main([*out, "--check"]) == 1


def test_committed_files_are_pretty_sorted_json_with_a_trailing_newline() -> None:
    """Each file is indented JSON with sorted keys, UTF-8, ending in one newline."""
    for path in COMMITTED.glob("*.json"):
        text = path.read_text(encoding="utf-8")
        pretty = json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False)
        assert text == pretty + "\n", path.name


def test_there_are_the_four_dashboards_with_stable_uids_and_the_tag() -> None:
    """Tasks, breakers, health and periodic dashboards exist as <uid>.json, tagged
    telemetry_guard."""
    boards = committed_boards()
    assert {data["uid"] for data in boards.values()} == UIDS
    for name, data in boards.items():
        assert name == f"{data['uid']}.json"
        assert "telemetry_guard" in data["tags"]
        assert data["title"].startswith("telemetry_guard / ")
        assert data.get("id") is None


def test_every_dashboard_has_the_datasource_variable_and_a_current_schema() -> None:
    """schemaVersion >= 39 and a `datasource` variable of type datasource for Prometheus."""
    for data in committed_boards().values():
        assert data["schemaVersion"] >= 39
        variable = variables(data).get("datasource")
        assert variable is not None, data["uid"]
        assert variable["type"] == "datasource"
        assert variable["query"] == "prometheus"


def test_tasks_dashboard_has_a_multi_value_task_variable() -> None:
    """The task variable lists label_values of the runtime histogram, multi, with All."""
    task = variables(board("telemetry-guard-tasks"))["task"]
    assert task["type"] == "query"
    assert task["query"] == ("label_values(telemetry_guard_task_runtime_seconds_count"
                             f"{{{FLEET}}}, task)")
    assert task["multi"] is True
    assert task["includeAll"] is True
    assert task["datasource"] == DATASOURCE


def test_breakers_dashboard_has_a_multi_value_breaker_variable() -> None:
    """The breaker variable lists breaker names of the state gauge, multi, with All."""
    breaker = variables(board("telemetry-guard-breakers"))["breaker"]
    assert breaker["type"] == "query"
    assert breaker["query"] == f"label_values(telemetry_guard_breaker_state{{{FLEET}}}, breaker)"
    assert breaker["multi"] is True
    assert breaker["includeAll"] is True
    assert breaker["datasource"] == DATASOURCE


def test_every_variable_an_expr_uses_is_defined_on_its_dashboard() -> None:
    """A panel using $task or $breaker sits on a dashboard defining that variable."""
    for uid, panel in panels():
        defined = set(variables(board(uid)))
        for target in panel["targets"]:
            for name in ("task", "breaker"):
                if f"${name}" in target["expr"]:
                    assert name in defined, (uid, panel["title"])


def test_every_panel_has_a_description_and_uses_the_datasource_variable() -> None:
    """Each panel explains itself and it and each of its targets use ${datasource}."""
    for uid, panel in panels():
        where = (uid, panel.get("title"))
        assert panel["type"] != "row", where
        assert len(panel.get("description", "").strip()) >= 80, where
        assert panel.get("datasource") == DATASOURCE, where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target.get("datasource") == DATASOURCE, where
            assert target["expr"].strip(), where


def test_no_datasource_uid_is_hard_coded() -> None:
    """The only uid values in a dashboard are its own uid and the ${datasource} variable."""
    for data in committed_boards().values():
        for path, key, value in walk(data):
            if key == "datasource":
                assert value == DATASOURCE, (data["uid"], path)
            elif key == "uid" and path:
                assert value == "${datasource}", (data["uid"], path)


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    """Panel ids are unique per dashboard and grid positions fit 24 columns without overlap."""
    for data in committed_boards().values():
        ids = [panel["id"] for panel in data["panels"]]
        assert len(set(ids)) == len(ids), data["uid"]
        taken: set[tuple[int, int]] = set()
        for panel in data["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, (data["uid"], panel["title"])
            cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                     for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not cells & taken, (data["uid"], panel["title"])
            taken |= cells


def test_metric_names_regex_finds_selected_metrics_only() -> None:
    """The test's own parser keeps metric names and drops functions, labels and keywords."""
    expr = ('histogram_quantile(0.9, sum by (le, outcome) (rate(foo_bucket{a=~"x|y"}[5m])))'
            " / on (le) group_left(b) bar or vector(0) > bool 1e3")
    assert metric_names(expr) == {"foo_bucket", "bar"}


def test_every_expr_uses_only_contract_metric_names() -> None:
    """Each target selects at least one metric, and only metrics of the telemetry contract."""
    for uid, panel in panels():
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, (uid, panel["title"], target["expr"])
            assert names <= CONTRACT_METRICS, (uid, panel["title"], names - CONTRACT_METRICS)


def test_every_expr_uses_only_the_documented_variables() -> None:
    """Only $task, $breaker, the grouping variables, $__rate_interval and $__range occur, so
    substitution is simple."""
    for uid, title, expr in dashboards.all_queries():
        used = set(re.findall(r"\$\{?[A-Za-z_]\w*", expr))
        assert used <= set(SUBSTITUTIONS), (uid, title, used)
        assert "$" not in substituted(expr), (uid, title)
        assert dashboards.substitute_variables(expr) == substituted(expr), (uid, title)


def test_all_queries_lists_exactly_the_exprs_in_the_committed_files() -> None:
    """all_queries() is the complete list of (uid, panel title, expr) the JSON files hold."""
    in_files = [(uid, panel["title"], target["expr"])
                for uid, panel in panels() for target in panel["targets"]]
    assert sorted(dashboards.all_queries()) == sorted(in_files)
    assert len(in_files) >= 20


def test_the_panels_the_issue_asks_for_are_there() -> None:
    """Failure/give-up rates, top exceptions, retries, runtime quantiles, success ratio,
    breaker state timeline, transitions, rejections, calls, notifications, sink errors and
    retry budget each have a panel."""
    exprs = {uid: "\n".join(without_fleet(e) for u, _, e in dashboards.all_queries() if u == uid)
             for uid in UIDS}
    tasks, breakers, health = (exprs["telemetry-guard-tasks"],
                               exprs["telemetry-guard-breakers"],
                               exprs["telemetry-guard-health"])
    assert "sum by (task, severity) (rate(telemetry_guard_task_failures_total" in tasks
    assert "sum by (task, severity) (rate(telemetry_guard_task_giveups_total" in tasks
    assert "topk(10, sum by (exception)" in tasks
    assert "sum by (task) (rate(telemetry_guard_task_retries_total" in tasks
    for quantile in ("0.5", "0.95", "0.99"):
        assert (f"histogram_quantile({quantile}, sum by (le, outcome) "
                "(rate(telemetry_guard_task_runtime_seconds_bucket") in tasks
    assert 'sum by (task) (rate(telemetry_guard_task_runtime_seconds_count{task=~"$task", ' \
           'outcome="success"}' in tasks
    timeline = [p for p in board("telemetry-guard-breakers")["panels"]
                if p["type"] == "state-timeline"]
    assert len(timeline) == 1 and "telemetry_guard_breaker_state" in timeline[0]["targets"][0][
        "expr"] and "== 1" in timeline[0]["targets"][0]["expr"]
    assert "telemetry_guard_breaker_transitions_total" in breakers
    assert 'outcome="rejected"' in breakers
    assert "sum by (breaker, outcome) (rate(telemetry_guard_breaker_calls_total" in breakers
    assert "sum by (channel, outcome) (rate(telemetry_guard_notifications_total" in health
    assert "sum by (sink) (rate(telemetry_guard_telemetry_errors_total" in health
    assert "telemetry_guard_retry_budget_exhausted_total" in health


def test_every_expr_parses_with_promtool(tmp_path: Path) -> None:
    """promtool check rules accepts every expression as a recording rule (after substitution)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found on PATH: install the Debian package `prometheus` "
                    "(apt-get install -y prometheus); CI installs it")
    queries = dashboards.all_queries()
    rules = [{"record": f"telemetry_guard_dashboard:query_{i}", "expr": substituted(expr)}
             for i, (_, _, expr) in enumerate(queries)]
    rule_file = tmp_path / "dashboard_queries.yml"
    # JSON is YAML: no YAML library needed.
    rule_file.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]},
                                    indent=2), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(rule_file)],
                            capture_output=True, text=True, timeout=60, check=False)
    index = "\n".join(f"query_{i}: {uid} / {title}" for i, (uid, title, _) in enumerate(queries))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{index}"
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_a_variant_config_narrows_every_query_and_adds_its_variables() -> None:
    """With a selector and other grouping labels, every panel query and every variable query
    carries the selector and each grouping variable; the variables chain outermost first."""
    config = MonitoringConfig(selector='job=~"celery-.*"', group_by=("region", "job"),
                              dashboard_labels=())
    for data in dashboards.dashboards(config):
        names = [v["name"] for v in data["templating"]["list"]]
        assert names[:3] == ["datasource", "region", "job"], (data["uid"], names)
        for panel in data["panels"]:
            for target in panel["targets"]:
                for series in re.findall(r"telemetry_guard_\w+\{[^}]*\}|telemetry_guard_\w+",
                                         target["expr"]):
                    assert 'job=~"celery-.*", region=~"$region", job=~"$job"' in series, (
                        data["uid"], panel["title"], series)
        region, job = data["templating"]["list"][1:3]
        assert region["query"] == ('label_values(telemetry_guard_task_runtime_seconds_count'
                                   '{job=~"celery-.*"}, region)')
        assert job["query"] == ('label_values(telemetry_guard_task_runtime_seconds_count'
                                '{job=~"celery-.*", region=~"$region"}, job)')
        assert {a["name"] for a in data["annotations"]["list"]} == {
            "Breaker transitions", "Give-up spikes"}
        assert any(link.get("url") == config.runbook_url for link in data["links"])


@pytest.mark.parametrize(("values", "says"), [
    ({"group_by": ["job", "task"]}, "label of the metrics themselves"),
    ({"group_by": ["bad-label"]}, "not a label name"),
    ({"selector": "job=celery"}, "not a label matcher"),
    ({"selectors": 'job="x"'}, "unknown config key"),
])
def test_a_config_that_cannot_work_is_a_clear_error(values: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        MonitoringConfig.from_mapping(values)


def test_the_command_reads_a_yaml_config_and_refuses_a_bad_one(tmp_path: Path,
                                                            capsys: Any) -> None:
    good = tmp_path / "monitoring.yml"
    good.write_text("selector: 'job=\"celery\", env!=\"dev\"'\ngroup_by: [cluster, job]\n"
                    "runbook_url: https://wiki.example/runbooks.md\n", encoding="utf-8")
    out = ["--out", str(tmp_path / "d"), "--alerts", str(tmp_path / "a"),
           "--kubernetes", str(tmp_path / "k")]
    assert dashboards.main([*out, "--config", str(good)]) == 0
    rules = (tmp_path / "a" / "telemetry_guard.rules.yml").read_text(encoding="utf-8")
    assert 'sum by (cluster, job, task) (rate(telemetry_guard_task_giveups_total' \
           '{job="celery", env!="dev"}[5m]))' in rules
    assert "https://wiki.example/runbooks.md#telemetryguardbreakeropen" in rules
    bad = tmp_path / "bad.yml"
    bad.write_text("group_by: [severity]\n", encoding="utf-8")
    assert dashboards.main([*out, "--config", str(bad)]) == 2
    assert "severity" in capsys.readouterr().err


def test_the_periodic_dashboard_has_the_table_and_panels_the_issue_asks_for() -> None:
    """The periodic dashboard lists every periodic task with its state, time since last run
    and success, interval and tolerance, and graphs last success, start delay, runs in
    progress, overlaps and beat's heartbeat age; its task variable lists beat entries."""
    data = board("telemetry-guard-periodic")
    task = variables(data)["task"]
    assert task["query"] == ("label_values(telemetry_guard_periodic_expected_interval_seconds"
                             f"{{{FLEET}}}, task)")
    assert task["multi"] is True and task["includeAll"] is True
    (table,) = [panel for panel in data["panels"] if panel["type"] == "table"]
    assert all(t["instant"] and t.get("format") == "table" for t in table["targets"])
    renamed = next(t["options"]["renameByName"] for t in table["transformations"]
                   if t["id"] == "organize")
    assert set(renamed.values()) >= {"Task", "State", "Since last run", "Since last success",
                                     "Interval", "Tolerance"}
    state = next(o for o in table["fieldConfig"]["overrides"]
                 if o["matcher"]["options"] == "State")
    mappings = next(p["value"] for p in state["properties"] if p["id"] == "mappings")
    texts = {m["text"] for m in mappings[0]["options"].values()}
    assert texts == {"ok", "waiting", "late", "overlapping", "failing", "missed", "beat down"}
    exprs = "\n".join(without_fleet(e) for u, _, e in dashboards.all_queries()
                      if u == "telemetry-guard-periodic")
    assert 'time() - max by (task) (telemetry_guard_periodic_last_success_timestamp_seconds' \
           '{task=~"$task"})' in exprs
    assert "telemetry_guard_periodic_last_start_delay_seconds" in exprs
    assert "max by (task) (telemetry_guard_periodic_running" in exprs
    assert "increase(telemetry_guard_periodic_overlaps_total" in exprs
    assert "time() - max (telemetry_guard_beat_heartbeat_timestamp_seconds)" in exprs


def test_beat_series_on_the_periodic_dashboard_are_not_narrowed_by_task() -> None:
    """Choosing a task never hides beat's heartbeat (a series without a task label)."""
    for _, title, expr in dashboards.all_queries():
        for series in re.findall(r"telemetry_guard_beat_\w+(?:\{[^}]*\})?", expr):
            assert "$task" not in series, (title, series)
