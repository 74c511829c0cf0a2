"""Variant ``diy``: the stack users assemble today around a plain Celery task.

opentelemetry-instrumentation-celery (spans dropped by the exporter), sentry-sdk's
CeleryIntegration posting to a local HTTP server that answers 200, and Celery signal
handlers for a Prometheus failure counter, a runtime histogram and a structlog line on failure.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sentry_sdk
import structlog
from celery import signals
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from prometheus_client import Counter, Histogram
from sentry_sdk.integrations.celery import CeleryIntegration

from ._common import NOOP, install_tracing, log_file, make_app, run_noop

app = make_app("bench-diy")

TASK_FAILURES = Counter("diy_task_failures", "Failed tasks.", ["task", "exception"])
TASK_RUNTIME = Histogram("diy_task_runtime_seconds", "Task run time.", ["task"])
log = structlog.get_logger("bench.diy")
_started: dict[str, float] = {}


@app.task(name=NOOP, acks_late=True, ignore_result=True)
def noop(i: int, fail_every: int) -> None:
    """Does nothing; every ``fail_every``-th call raises ValueError."""
    run_noop(i, fail_every)


class _SentryStub(BaseHTTPRequestHandler):
    """Answers 200 to every request, reads and drops the body, counts requests."""

    protocol_version = "HTTP/1.1"
    requests = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        type(self).requests += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def serve_sentry_stub() -> int:
    """Start the stub in a daemon thread; return its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SentryStub)
    threading.Thread(target=server.serve_forever, name="sentry-stub", daemon=True).start()
    return int(server.server_address[1])


def on_prerun(task_id: str | None = None, **_: Any) -> None:
    if task_id is not None:
        _started[task_id] = time.perf_counter()


def on_postrun(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id, None) if task_id is not None else None
    if started is not None and sender is not None:
        TASK_RUNTIME.labels(sender.name).observe(time.perf_counter() - started)


def on_failure(sender: Any = None, task_id: str | None = None,
               exception: BaseException | None = None, einfo: Any = None, **_: Any) -> None:
    name = getattr(sender, "name", "unknown")
    TASK_FAILURES.labels(name, type(exception).__name__).inc()
    log.error("task.failed", task_name=name, task_id=task_id,
              exception_type=type(exception).__name__, message=str(exception),
              traceback=getattr(einfo, "traceback", None))


@signals.worker_init.connect(weak=False)
def set_up_telemetry(**_: Any) -> None:
    """Tracing, Sentry, structlog and the signal handlers, before the worker consumes."""
    install_tracing()
    CeleryInstrumentor().instrument()
    port = serve_sentry_stub()
    sentry_sdk.init(dsn=f"http://key@127.0.0.1:{port}/1", integrations=[CeleryIntegration()])
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=log_file("diy")),
        cache_logger_on_first_use=True,
    )
    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    signals.task_failure.connect(on_failure, weak=False)


@signals.worker_shutdown.connect(weak=False)
def report_sentry_requests(**_: Any) -> None:
    """Leave evidence in the worker log that Sentry really sent its events."""
    sentry_sdk.flush(2.0)
    print(f"bench-diy: sentry stub received {_SentryStub.requests} requests", file=sys.stderr)
