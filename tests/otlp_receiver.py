"""A private OTLP/HTTP metrics receiver for tests: decodes what exporters post to it.

``OtlpReceiver("ok")`` answers 200, ``"error"`` answers 503 (a collector that is down but
listening). Exporters post protobuf ``ExportMetricsServiceRequest`` bodies to
``/v1/metrics`` (``endpoint``); every data point is kept as a ``Point``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.local_http import decode_body, serve_in_thread

Mode = Literal["ok", "error"]


@dataclass(frozen=True)
class Point:
    """One decoded data point, with the resource and metric it belongs to."""

    resource: dict[str, Any]
    metric: str
    kind: str  # "sum", "histogram" or "gauge"
    unit: str
    attributes: dict[str, Any]
    time_unix_nano: int
    value: float = 0.0
    monotonic: bool = False
    cumulative: bool = False
    count: int = 0
    total: float = 0.0
    bounds: tuple[float, ...] = ()
    bucket_counts: tuple[int, ...] = ()

    @property
    def instance(self) -> str:
        """The exporting process's ``service.instance.id``."""
        return str(self.resource.get("service.instance.id", ""))


def _value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


def _number(point: Any) -> float:
    return float(point.as_int if point.WhichOneof("value") == "as_int" else point.as_double)


def decode(body: bytes) -> list[Point]:
    """Every data point of one ``ExportMetricsServiceRequest``."""
    request = ExportMetricsServiceRequest()
    request.ParseFromString(body)
    points: list[Point] = []
    for resource_metrics in request.resource_metrics:
        resource = _attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                common = {"resource": resource, "metric": metric.name, "unit": metric.unit}
                if kind == "sum":
                    for p in metric.sum.data_points:
                        points.append(Point(
                            **common, kind="sum", attributes=_attributes(p.attributes),
                            time_unix_nano=p.time_unix_nano, value=_number(p),
                            monotonic=metric.sum.is_monotonic,
                            cumulative=metric.sum.aggregation_temporality == 2))
                elif kind == "gauge":
                    for p in metric.gauge.data_points:
                        points.append(Point(
                            **common, kind="gauge", attributes=_attributes(p.attributes),
                            time_unix_nano=p.time_unix_nano, value=_number(p)))
                elif kind == "histogram":
                    for p in metric.histogram.data_points:
                        points.append(Point(
                            **common, kind="histogram", attributes=_attributes(p.attributes),
                            time_unix_nano=p.time_unix_nano,
                            cumulative=metric.histogram.aggregation_temporality == 2,
                            count=p.count, total=p.sum, bounds=tuple(p.explicit_bounds),
                            bucket_counts=tuple(p.bucket_counts)))
    return points


@dataclass
class OtlpReceiver:
    """A local HTTP server standing in for an OpenTelemetry Collector's OTLP/HTTP port."""

    mode: Mode = "ok"
    points: list[Point] = field(default_factory=list)
    requests: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd = serve_in_thread(self._handler(), "otlp-receiver")

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def endpoint(self) -> str:
        """The URL an ``OTLPMetricExporter(endpoint=...)`` posts to."""
        return f"http://127.0.0.1:{self.port}/v1/metrics"

    def received(self, metric: str) -> list[Point]:
        """Every point of ``metric`` received so far, in arrival order."""
        with self._lock:
            return [p for p in self.points if p.metric == metric]

    def latest(self, metric: str) -> dict[tuple[str, frozenset[tuple[str, Any]]], Point]:
        """The newest point of ``metric`` per exporting instance and attribute set."""
        newest: dict[tuple[str, frozenset[tuple[str, Any]]], Point] = {}
        for p in self.received(metric):
            key = (p.instance, frozenset(p.attributes.items()))
            if key not in newest or p.time_unix_nano >= newest[key].time_unix_nano:
                newest[key] = p
        return newest

    def total(self, metric: str, **attributes: Any) -> float:
        """A cumulative counter summed over instances (each instance's newest value), for
        the points whose attributes include ``attributes``."""
        return sum(p.value for p in self.latest(metric).values()
                   if attributes.items() <= p.attributes.items())

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()

    def _record(self, path: str, body: bytes, encoding: str | None) -> None:
        with self._lock:
            self.requests += 1
            try:
                if path != "/v1/metrics":
                    raise ValueError(f"unexpected path {path}")
                self.points.extend(decode(decode_body(body, encoding)))
            except Exception as exc:  # a malformed post fails the test that looks at errors
                self.errors.append(f"{path}: {type(exc).__name__}: {exc}")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if server.mode == "error":
                    with server._lock:
                        server.requests += 1
                    reply, status = b"", 503
                else:
                    server._record(self.path, body, self.headers.get("Content-Encoding"))
                    reply, status = ExportMetricsServiceResponse().SerializeToString(), 200
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                """Silence the per-request log lines."""

        return Handler
