"""A Celery app whose prefork children export the guard's metrics over OTLP/HTTP.

The documented set-up: ``telemetry_guard_metrics = "otlp"``, and each pool child creates
its own MeterProvider in ``worker_process_init`` with a distinct ``service.instance.id``.
"""

from __future__ import annotations

import os
import socket

from celery import Celery, signals
from opentelemetry import metrics
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from telemetry_guard import CircuitBreaker, GuardedTask, RetryPolicy, TelemetryGuard

BROKER = os.environ["TG_TEST_BROKER"]
ENDPOINT = os.environ["TG_TEST_OTLP_ENDPOINT"]

app = Celery("otlp_app", broker=BROKER, backend=BROKER)
app.conf.update(
    worker_max_tasks_per_child=int(os.environ.get("TG_TEST_MAX_TASKS_PER_CHILD", "0")) or None,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_default_queue="otlp",
    telemetry_guard_metrics="otlp",
)
guard = TelemetryGuard(app)
payments = CircuitBreaker("otlp.payments")


@signals.worker_process_init.connect
def export_metrics_from_this_child(**_: object) -> None:
    """Each pool child exports its own metrics, under its own instance id."""
    resource = Resource.create({
        "service.name": "otlp_app",
        "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
    })
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=ENDPOINT, timeout=5),
                                           export_interval_millis=200)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))


@app.task(bind=True, base=GuardedTask, name="otlp.fail", retry_policy=RetryPolicy(max_retries=0))
def fail(self: GuardedTask, n: int) -> None:
    """Always fails with a non-retryable error."""
    raise ValueError(f"failure {n}")


@app.task(name="otlp.pid")
def pid() -> int:
    """The pid of the pool child that ran it."""
    return os.getpid()
