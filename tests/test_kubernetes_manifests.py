"""Tests for telemetry_guard.dashboards.kubernetes: the PrometheusRule and the dashboards
ConfigMap, fed the real rule files and dashboards, checked against the real schemas.

- PrometheusRule: the CRD's openAPIV3Schema, vendored in tests/schemas/ (see its README).
  Unknown fields are refused, as the API server's strict field validation does (and since
  the CRD is structural, a field it does not know would otherwise be dropped silently).
- ConfigMap: the Kubernetes core v1 schema shipped by ``kubernetes-validate`` (strict).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from telemetry_guard.dashboards import dashboards, render
from telemetry_guard.dashboards.kubernetes import (
    CONFIGMAP_DATA_LIMIT,
    dashboards_configmap,
    is_configmap_key,
    prometheus_rule,
    render_yaml,
)

ROOT = Path(__file__).resolve().parents[1]
RULE_FILES = sorted((ROOT / "alerts").glob("*.rules.yml"))
COMMITTED_DASHBOARDS = ROOT / "dashboards"
CRD = Path(__file__).resolve().parent / "schemas" / "monitoring.coreos.com_prometheusrules.yaml"

#: The oldest and newest Kubernetes versions whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = [kubernetes_validate.all_versions()[0], kubernetes_validate.latest_version()]

#: kubectl's client-side apply copies the object into an annotation; all annotations of an
#: object add up to at most 256 KiB (``--server-side`` apply has no such copy).
ANNOTATIONS_LIMIT = 256 * 1024

# Kubernetes' own syntax checks (k8s.io/apimachinery/pkg/util/validation).
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
CONFIGMAP_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def rule_file_groups() -> list[dict[str, Any]]:
    """The groups of every alerts/*.rules.yml, file after file."""
    return [group for path in RULE_FILES
            for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]]


def strict(schema: Any) -> Any:
    """``schema`` with unknown properties refused wherever it lists the known ones."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def rule_validator() -> jsonschema.protocols.Validator:
    """A validator for PrometheusRule objects, from the CRD's served v1 schema."""
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1" and v["served"]]
    schema = strict(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator: jsonschema.protocols.Validator, manifest: Any) -> list[str]:
    """Every schema violation in ``manifest``, as ``path: message``."""
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(manifest)]


def assert_valid_metadata(metadata: dict[str, Any]) -> None:
    """The name, labels and annotations are ones the API server accepts."""
    assert DNS_SUBDOMAIN.fullmatch(metadata["name"]) and len(metadata["name"]) <= 253
    for key, value in metadata.get("labels", {}).items():
        assert_qualified_name(key)
        assert isinstance(value, str) and LABEL_VALUE.fullmatch(value) and len(value) <= 63, value
    for key in metadata.get("annotations", {}):
        assert_qualified_name(key)


def assert_qualified_name(key: str) -> None:
    prefix, _, name = key.rpartition("/")
    assert QUALIFIED_NAME.fullmatch(name) and len(name) <= 63, key
    assert not prefix or (DNS_SUBDOMAIN.fullmatch(prefix) and len(prefix) <= 253), key


# -- PrometheusRule ------------------------------------------------------------------------

def test_the_rule_files_make_a_prometheus_rule_the_crd_accepts(
        rule_validator: jsonschema.protocols.Validator) -> None:
    """The real rule groups, in a PrometheusRule, pass the CRD's schema with no error."""
    manifest = prometheus_rule(rule_file_groups(), namespace="monitoring")
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert schema_errors(rule_validator, manifest) == []
    assert_valid_metadata(manifest["metadata"])


def _set_rule_field(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(manifest: dict[str, Any]) -> None:
        manifest["spec"]["groups"][-1]["rules"][0][field] = value
    return mutate


@pytest.mark.parametrize("mutate", [
    _set_rule_field("for", "5 minutes"),
    _set_rule_field("labels", {"severity": "critical", "priority": 1}),
    _set_rule_field("keep_firing", "5m"),
    lambda manifest: manifest["spec"]["groups"][0].pop("name"),
], ids=["bad duration", "non-string label", "unknown field", "group without name"])
def test_the_crd_check_refuses_what_the_api_server_refuses(
        rule_validator: jsonschema.protocols.Validator,
        mutate: Callable[[dict[str, Any]], None]) -> None:
    """The schema check is not vacuous: each of these breaks it."""
    manifest = prometheus_rule(rule_file_groups())
    mutate(manifest)
    assert schema_errors(rule_validator, manifest) != []


def test_the_prometheus_rule_holds_the_rule_files_groups_through_yaml() -> None:
    """Read back from its YAML, the object's spec.groups equal the rule files' groups."""
    groups = rule_file_groups()
    assert groups, "no rule groups found under alerts/"
    manifest = prometheus_rule(groups)
    assert manifest["spec"]["groups"] == groups
    assert yaml.safe_load(render_yaml(manifest))["spec"]["groups"] == groups


def test_prometheus_rule_labels_default_and_extend() -> None:
    """Default labels name the app and role: alert-rules; extra labels (release) add on."""
    default = prometheus_rule([])["metadata"]
    assert default == {"name": "telemetry-guard", "labels": {
        "app.kubernetes.io/name": "telemetry-guard",
        "app.kubernetes.io/part-of": "telemetry-guard",
        "role": "alert-rules"}}
    chosen = prometheus_rule([], name="tg-rules", namespace="monitoring",
                             labels={"release": "kube-prometheus-stack"})["metadata"]
    assert chosen["name"] == "tg-rules"
    assert chosen["namespace"] == "monitoring"
    assert chosen["labels"]["release"] == "kube-prometheus-stack"
    assert chosen["labels"]["role"] == "alert-rules"
    assert_valid_metadata(chosen)


def test_prometheus_rule_does_not_share_the_callers_groups() -> None:
    """Changing the manifest afterwards leaves the caller's groups as they were."""
    groups = rule_file_groups()
    before = copy.deepcopy(groups)
    prometheus_rule(groups)["spec"]["groups"][0]["name"] = "changed"
    assert groups == before


# -- Dashboards ConfigMap ------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_dashboards_configmap_passes_the_kubernetes_schema(version: str) -> None:
    """The real dashboards' ConfigMap passes the core v1 ConfigMap schema (strict)."""
    manifest = dashboards_configmap(dashboards(), namespace="monitoring", folder="telemetry_guard")
    kubernetes_validate.validate(manifest, version, strict=True)
    assert_valid_metadata(manifest["metadata"])


@pytest.mark.parametrize("mutate", [
    lambda manifest: manifest["data"].update({"extra.json": {"not": "a string"}}),
    lambda manifest: manifest.update({"spec": {}}),
], ids=["non-string value", "unknown field"])
def test_the_configmap_check_refuses_what_the_api_server_refuses(
        mutate: Callable[[dict[str, Any]], None]) -> None:
    """The schema check is not vacuous: each of these breaks it."""
    manifest = dashboards_configmap(dashboards())
    mutate(manifest)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSIONS[-1], strict=True)


def test_each_dashboard_in_the_configmap_is_byte_identical_to_the_committed_file() -> None:
    """Read back from the YAML, each data entry is exactly dashboards/<uid>.json."""
    text = render_yaml(dashboards_configmap(dashboards()))
    data = yaml.safe_load(text)["data"]
    assert sorted(data) == sorted(path.name for path in COMMITTED_DASHBOARDS.glob("*.json"))
    for key, value in data.items():
        assert value.encode("utf-8") == (COMMITTED_DASHBOARDS / key).read_bytes(), key
    for board in dashboards():
        assert data[f"{board['uid']}.json"] == render(board)


def test_the_configmap_data_keys_are_valid_configmap_keys() -> None:
    """Every key is what Kubernetes allows: [-._a-zA-Z0-9]+, at most 253, not . or ..*."""
    keys = list(dashboards_configmap(dashboards())["data"])
    assert len(keys) == len(dashboards())
    for key in keys:
        assert CONFIGMAP_KEY.fullmatch(key) and len(key) <= 253, key
        assert key != "." and not key.startswith(".."), key


def test_the_configmap_stays_under_the_kubernetes_size_limits() -> None:
    """Data and whole object under 1 MiB; the object also fits kubectl's last-applied copy."""
    manifest = dashboards_configmap(dashboards(), folder="telemetry_guard")
    data_bytes = sum(len(value.encode("utf-8")) for value in manifest["data"].values())
    object_bytes = len(json.dumps(manifest, separators=(",", ":")).encode("utf-8"))
    assert data_bytes <= CONFIGMAP_DATA_LIMIT == 1024 * 1024
    assert object_bytes < 1024 * 1024
    assert object_bytes < ANNOTATIONS_LIMIT


def test_the_configmap_is_labelled_for_the_grafana_sidecar() -> None:
    """grafana_dashboard: "1" by default, another label on request, folder as annotation."""
    default = dashboards_configmap(dashboards())["metadata"]
    assert default["name"] == "telemetry-guard-dashboards"
    assert default["labels"]["grafana_dashboard"] == "1"
    assert "annotations" not in default and "namespace" not in default
    chosen = dashboards_configmap(dashboards(), namespace="grafana",
                                  sidecar_label=("my_dashboards", "yes"),
                                  folder="Celery")["metadata"]
    assert chosen["namespace"] == "grafana"
    assert chosen["labels"]["my_dashboards"] == "yes"
    assert "grafana_dashboard" not in chosen["labels"]
    assert chosen["annotations"] == {"grafana_folder": "Celery"}


@pytest.mark.parametrize("boards, message", [
    ([{"uid": "has space"}], "no valid ConfigMap key"),
    ([{"uid": "same"}, {"uid": "same"}], "two dashboards"),
    ([{"uid": "huge", "blob": "x" * CONFIGMAP_DATA_LIMIT}], "at most"),
], ids=["bad uid", "duplicate uid", "over 1 MiB"])
def test_dashboards_configmap_refuses_what_kubernetes_would(
        boards: list[dict[str, Any]], message: str) -> None:
    """A ConfigMap the API server would reject is refused up front, saying why."""
    with pytest.raises(ValueError, match=message):
        dashboards_configmap(boards)


def test_is_configmap_key_agrees_with_kubernetes_rules() -> None:
    """Dots, dashes and underscores pass; slashes, spaces, '.', '..x' and 254 chars do not."""
    assert is_configmap_key("telemetry-guard_tasks.v2.json")
    for key in ("a/b.json", "a b.json", ".", "..data", "", "x" * 254):
        assert not is_configmap_key(key), key


# -- YAML ----------------------------------------------------------------------------------

def test_render_yaml_is_a_stable_stream_of_the_manifests() -> None:
    """Same manifests, same text; each is a document; dashboards are readable blocks."""
    rule = prometheus_rule(rule_file_groups())
    configmap = dashboards_configmap(dashboards())
    text = render_yaml(rule, configmap)
    assert text == render_yaml(prometheus_rule(rule_file_groups()),
                               dashboards_configmap(dashboards()))
    assert list(yaml.safe_load_all(text)) == [rule, configmap]
    assert text.startswith("---\napiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\n")
    assert "\n  telemetry-guard-tasks.json: |\n" in text
    assert "&id" not in text and "*id" not in text
