"""Kubernetes manifests for the dashboards and the rule groups, and their YAML.

- :func:`prometheus_rule`: a ``monitoring.coreos.com/v1`` ``PrometheusRule`` holding
  Prometheus rule groups, for the Prometheus Operator (kube-prometheus, kube-prometheus-stack).
- :func:`dashboards_configmap`: a ``v1`` ``ConfigMap`` with one ``<uid>.json`` entry per
  dashboard, labelled for the Grafana dashboard sidecar (grafana Helm chart,
  kube-prometheus-stack).
- :func:`render_yaml`: the manifests as a stable YAML stream for ``kubectl apply -f``.

Which objects the Operator and the sidecar pick up is decided by label selectors on their
side; the defaults here and what to pass for the common set-ups:

- kube-prometheus-stack's ``Prometheus`` selects rules labelled ``release: <helm release
  name>`` unless ``prometheus.prometheusSpec.ruleSelectorNilUsesHelmValues`` is false:
  pass ``labels={"release": "<helm release name>"}``.
- kube-prometheus selects every ``PrometheusRule``; ``role: alert-rules`` is the label its
  own rule objects carry, and is always set here.
- The sidecar loads ConfigMaps labelled ``grafana_dashboard`` (kube-prometheus-stack sets
  the value ``"1"``; the grafana chart alone accepts any value by default). The folder
  annotation only takes effect when the chart sets ``sidecar.dashboards.folderAnnotation:
  grafana_folder`` and ``sidecar.dashboards.provider.foldersFromFilesStructure: true``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from .grafana import Json, render

PROMETHEUS_RULE_API_VERSION = "monitoring.coreos.com/v1"

#: Recommended labels (``app.kubernetes.io/*``) on every manifest made here.
DEFAULT_LABELS: dict[str, str] = {
    "app.kubernetes.io/name": "telemetry-guard",
    "app.kubernetes.io/part-of": "telemetry-guard",
}

#: The label kube-prometheus puts on its own ``PrometheusRule`` objects.
RULE_ROLE_LABEL: tuple[str, str] = ("role", "alert-rules")

#: The label the Grafana sidecar looks for, with kube-prometheus-stack's value.
SIDECAR_LABEL: tuple[str, str] = ("grafana_dashboard", "1")

#: The annotation naming the Grafana folder (the chart's ``sidecar.dashboards.folderAnnotation``).
FOLDER_ANNOTATION = "grafana_folder"

#: Kubernetes refuses a ConfigMap whose data adds up to more than this many bytes.
CONFIGMAP_DATA_LIMIT = 1024 * 1024

#: A valid ConfigMap data key (Kubernetes' ``IsConfigMapKey``), besides ``.`` and ``..``.
_CONFIGMAP_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")


def prometheus_rule(groups: Sequence[Json], *, name: str = "telemetry-guard",
                    namespace: str | None = None,
                    labels: Mapping[str, str] | None = None) -> Json:
    """A ``PrometheusRule`` whose ``spec.groups`` are ``groups`` (a rule file's ``groups``).

    Its labels are :data:`DEFAULT_LABELS` and ``role: alert-rules``, then ``labels``
    (which may add, e.g. ``release``, or override them). Without ``namespace`` the object
    goes to the namespace ``kubectl`` is told.
    """
    role_key, role_value = RULE_ROLE_LABEL
    metadata = _metadata(name, namespace, {**DEFAULT_LABELS, role_key: role_value,
                                           **(labels or {})})
    return {
        "apiVersion": PROMETHEUS_RULE_API_VERSION,
        "kind": "PrometheusRule",
        "metadata": metadata,
        "spec": {"groups": copy.deepcopy(list(groups))},
    }


def dashboards_configmap(boards: Sequence[Json], *, name: str = "telemetry-guard-dashboards",
                         namespace: str | None = None,
                         sidecar_label: tuple[str, str] = SIDECAR_LABEL,
                         folder: str | None = None,
                         folder_annotation: str = FOLDER_ANNOTATION) -> Json:
    """A ``ConfigMap`` with one ``<uid>.json`` entry per dashboard, as :func:`.render` writes it.

    Labelled :data:`DEFAULT_LABELS` and ``sidecar_label``; with ``folder``, annotated
    ``folder_annotation: folder``. Raises ``ValueError`` when a uid makes no valid data key,
    two dashboards share a uid, or the data exceeds :data:`CONFIGMAP_DATA_LIMIT`.
    """
    data: dict[str, str] = {}
    for board in boards:
        key = f"{board['uid']}.json"
        if not is_configmap_key(key):
            raise ValueError(f"dashboard uid {board['uid']!r} makes no valid ConfigMap key")
        if key in data:
            raise ValueError(f"two dashboards have the uid {board['uid']!r}")
        data[key] = render(board)
    size = sum(len(text.encode("utf-8")) for text in data.values())
    if size > CONFIGMAP_DATA_LIMIT:
        raise ValueError(f"the dashboards take {size} bytes; a ConfigMap holds at most "
                         f"{CONFIGMAP_DATA_LIMIT}: split them over several ConfigMaps")
    label_key, label_value = sidecar_label
    metadata = _metadata(name, namespace, {**DEFAULT_LABELS, label_key: label_value})
    if folder is not None:
        metadata["annotations"] = {folder_annotation: folder}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def is_configmap_key(key: str) -> bool:
    """Whether Kubernetes accepts ``key`` as a ConfigMap data key."""
    return _CONFIGMAP_KEY.fullmatch(key) is not None and not key.startswith("..") \
        and key != "."


def render_yaml(*manifests: Json) -> str:
    """The manifests as one YAML stream, a ``---`` document each, keys in their given order.

    Multi-line strings (dashboard JSON, long PromQL) are literal blocks, nothing is folded
    or aliased, so the same manifests always give the same text and diffs stay readable.
    """
    return yaml.dump_all(manifests, Dumper=_ManifestDumper, sort_keys=False,
                         allow_unicode=True, explicit_start=True, width=2**31 - 1,
                         default_flow_style=False)


def _metadata(name: str, namespace: str | None, labels: dict[str, str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata["labels"] = labels
    return metadata


class _ManifestDumper(yaml.SafeDumper):
    """Safe YAML without anchors, with multi-line strings as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_ManifestDumper.add_representer(str, _represent_str)
