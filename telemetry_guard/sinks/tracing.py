"""OpenTelemetry: the task's consumer span, its failure annotations, and header propagation."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from ..core.events import BreakerChange, FailureEvent
from ..core.sink import Sink

TRACER_NAME = "telemetry_guard"
#: The span name opentelemetry-instrumentation-celery gives a task run.
INSTRUMENTATION_SPAN_PREFIX = "run/"
#: The instrumentation scope of that library's spans.
INSTRUMENTATION_SCOPE = "opentelemetry.instrumentation.celery"
#: Prefix of the attributes the guard adds to span events.
EVENT_PREFIX = "telemetry_guard."


class _RequestGetter(Getter[Any]):
    """Reads W3C headers from a Celery request, where custom headers are attributes."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = getattr(carrier, key, None)
        if value is None:
            headers = getattr(carrier, "headers", None)
            if isinstance(headers, dict):
                value = headers.get(key)
        if value is None:
            return None
        return [value] if isinstance(value, str) else list(value)

    def keys(self, carrier: Any) -> list[str]:
        return []


REQUEST_GETTER = _RequestGetter()


def inject_headers(headers: MutableMapping[str, Any]) -> None:
    """Write the current trace context into outgoing task headers (W3C trace context)."""
    if "traceparent" in headers:
        return
    propagate.inject(headers)


#: Message header: the W3C traceparent of the span of the task run that published the task
#: (a retry, the next chain step); the task's span links to it.
LINK_HEADER = "telemetry_guard_link"
#: Request attribute where a task run's span is remembered (made a traceparent only when a
#: message is published: the next chain step is sent by Celery's tracer after the span ended).
SPAN_REMEMBERED = "telemetry_guard_span"


def traceparent(span: Any) -> str | None:
    """A span's W3C traceparent, or None for an invalid span."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def linked_span(request: Any) -> SpanContext | None:
    """The span context named by the request's link header, or None (absent or malformed)."""
    value = getattr(request, LINK_HEADER, None)
    if not isinstance(value, str):
        return None
    parts = value.split("-")
    try:
        if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
            return None
        ctx = SpanContext(int(parts[1], 16), int(parts[2], 16), is_remote=True,
                          trace_flags=TraceFlags(int(parts[3], 16) & 0xFF))
    except ValueError:
        return None
    return ctx if ctx.is_valid else None


class TaskSpan:
    """The span of one task run: ours, or the instrumentation's when it opened one.

    It links to the span of the run that published the task (a retry's previous attempt,
    a chain's previous step), and is remembered on the request for the tasks it publishes.
    """

    __slots__ = ("span", "_token", "_owned")

    def __init__(self, task_name: str, task_id: str | None, retries: int, request: Any) -> None:
        current = trace.get_current_span()
        attributes = _attributes(task_name, task_id, retries, request)
        link = linked_span(request)
        if runs_task(current, task_name):
            self.span, self._token, self._owned = current, None, False
            current.set_attributes(attributes)
            if link is not None and hasattr(current, "add_link"):
                current.add_link(link)
        else:
            parent = (propagate.extract(request, getter=REQUEST_GETTER)
                      if _carries_context(request) else None)
            self.span = _tracer().start_span(
                INSTRUMENTATION_SPAN_PREFIX + task_name, context=parent, kind=SpanKind.CONSUMER,
                attributes=attributes, links=None if link is None else (Link(link),))
            self._token = otel_context.attach(trace.set_span_in_context(self.span, parent))
            self._owned = True
        setattr(request, SPAN_REMEMBERED, self.span)

    @property
    def owned(self) -> bool:
        """Whether the guard opened this span (else it is the instrumentation's)."""
        return self._owned

    def end(self) -> None:
        """End the span when it is ours and restore the previous context."""
        if self._owned:
            self.span.end()
            if self._token is not None:
                otel_context.detach(self._token)


#: The attribute in which opentelemetry-instrumentation-celery records ``str(reason)`` of a retry.
RETRY_REASON_ATTRIBUTE = "celery.retry.reason"


def runs_task(span: Any, task_name: str) -> bool:
    """Whether ``span`` is the open ``run/<task name>`` span of the instrumentation."""
    return span.is_recording() and getattr(span, "name", "") == (
        INSTRUMENTATION_SPAN_PREFIX + task_name)


def annotate_instrumentation_span(span: Any, task_name: str, task_id: str | None,
                                  retries: int, request: Any) -> None:
    """Give the instrumentation's span of a plain task the ``celery.*`` and messaging
    attributes a GuardedTask's span has."""
    if runs_task(span, task_name):
        span.set_attributes(_attributes(task_name, task_id, retries, request))


def scrub_instrumentation_span(span: Any, redact: Any) -> None:
    """Before the instrumentation ends its span: redact the texts it wrote there itself,
    the ERROR status description and ``celery.retry.reason`` (its ``exception`` event cannot
    be changed; see :class:`RedactingSpanExporter`)."""
    reason = (getattr(span, "attributes", None) or {}).get(RETRY_REASON_ATTRIBUTE)
    if isinstance(reason, str):
        span.set_attribute(RETRY_REASON_ATTRIBUTE, redact(reason))
    status = getattr(span, "status", None)
    if status is not None and status.status_code is StatusCode.ERROR and status.description:
        span.set_status(Status(StatusCode.ERROR, redact(status.description)))


def _carries_context(request: Any) -> bool:
    """Whether the message brought trace headers (most cheaply: a ``traceparent``)."""
    if getattr(request, "traceparent", None) is not None:
        return True
    headers = getattr(request, "headers", None)
    return isinstance(headers, dict) and "traceparent" in headers


def _attributes(task_name: str, task_id: str | None, retries: int,
                request: Any) -> dict[str, Any]:
    """``celery.*`` and the messaging semantic conventions of a consumer span."""
    attributes: dict[str, Any] = {
        "celery.task_name": task_name, "celery.retries": retries,
        "messaging.system": "celery", "messaging.operation.type": "process",
    }
    if task_id:
        attributes["celery.task_id"] = task_id
        attributes["messaging.message.id"] = task_id
    delivery_info = getattr(request, "delivery_info", None)
    destination = delivery_info.get("routing_key") if isinstance(delivery_info, dict) else None
    if destination:
        attributes["messaging.destination.name"] = str(destination)
    return attributes


def opened_by_instrumentation(span: Any) -> bool:
    """Whether ``span`` is opentelemetry-instrumentation-celery's task span, still open."""
    scope = getattr(span, "instrumentation_scope", None)
    return getattr(scope, "name", None) == INSTRUMENTATION_SCOPE and span.is_recording()


_TRACER: trace.Tracer | None = None


def _tracer() -> trace.Tracer:
    """Our tracer, looked up once (a proxy until the application sets a provider)."""
    global _TRACER
    if _TRACER is None:
        _TRACER = trace.get_tracer(TRACER_NAME)
    return _TRACER


def current_ids() -> tuple[str | None, str | None]:
    """The active span's trace and span ids as hex, or ``(None, None)``."""
    return span_ids(trace.get_current_span())


def span_ids(span: Any) -> tuple[str | None, str | None]:
    """A span's trace and span ids as hex, or ``(None, None)`` when it has none."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def workflow_attributes(event: FailureEvent) -> dict[str, Any]:
    """``telemetry_guard.root_id``, ``.parent_id``, ``.chain_position``, ``.chord_id``
    where the failure's workflow context has them."""
    values = {"root_id": event.root_id, "parent_id": event.parent_id,
              "chain_position": event.chain_position, "chord_id": event.chord_id}
    return {EVENT_PREFIX + key: value for key, value in values.items() if value is not None}


class TracingSink(Sink):
    """Records the failure on the active span: exception, ERROR status, retry or give-up.

    One ``exception`` event per failed attempt: on opentelemetry-instrumentation-celery's
    span, a give-up that Celery sees as the task's failure is recorded by the
    instrumentation itself (its ``task_failure`` receiver), so the guard adds none.
    """

    name = "tracing"

    def on_failure(self, event: FailureEvent) -> None:
        span = trace.get_current_span()
        if not span.is_recording():
            return
        span.set_attribute("telemetry_guard.severity", event.severity.label)
        span.set_attributes(workflow_attributes(event))
        if not (event.decision == "give_up" and not event.expected
                and opened_by_instrumentation(span)):
            # Recorded by hand, not with record_exception(): the message and
            # traceback here are the redacted ones.
            span.add_event("exception", {
                "exception.type": event.exception_type,
                "exception.message": event.message,
                "exception.stacktrace": event.traceback,
            })
        span.set_status(Status(StatusCode.ERROR, f"{event.exception_type}"))
        if event.retried:
            span.add_event("task.retry", {
                EVENT_PREFIX + "attempt": event.attempt,
                EVENT_PREFIX + "max_retries": (event.max_retries
                                               if event.max_retries is not None else -1),
                EVENT_PREFIX + "delay_s": event.delay_s or 0.0,
                "exception.type": event.exception_type,
            })
        else:
            span.add_event("task.gave_up", {EVENT_PREFIX + "reason": event.reason,
                                            EVENT_PREFIX + "attempt": event.attempt,
                                            "exception.type": event.exception_type})

    def on_breaker_change(self, change: BreakerChange) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("breaker.state_changed", {
                EVENT_PREFIX + "breaker": change.breaker,
                EVENT_PREFIX + "from_state": change.from_state,
                EVENT_PREFIX + "to_state": change.to_state})

    def flush(self, timeout: float = 5.0) -> None:
        provider = trace.get_tracer_provider()
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is not None:
            force_flush(int(timeout * 1000))


#: Loggers through which the OpenTelemetry SDK reports a failing span exporter.
EXPORTER_LOGGERS = ("opentelemetry.sdk.trace.export", "opentelemetry.sdk._shared_internal")


class ExporterFailureHandler(logging.Handler):
    """Counts span-exporter failures the SDK reports by logging (it never raises them)."""

    def __init__(self, report: Any) -> None:
        super().__init__(level=logging.ERROR)
        self._report = report

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("Exception while exporting"):
            exc = record.exc_info[1] if record.exc_info else None
            self._report("span_exporter", exc)

    @classmethod
    def install(cls, report: Any) -> ExporterFailureHandler:
        """Attach one handler to the SDK's export loggers, replacing an earlier one."""
        handler = cls(report)
        for name in EXPORTER_LOGGERS:
            log = logging.getLogger(name)
            for old in [h for h in log.handlers if isinstance(h, cls)]:
                log.removeHandler(old)
            log.addHandler(handler)
            if log.getEffectiveLevel() > logging.ERROR:
                log.setLevel(logging.ERROR)  # else the SDK's report never reaches the handler
        return handler

    def uninstall(self) -> None:
        """Detach from the SDK's export loggers."""
        for name in EXPORTER_LOGGERS:
            logging.getLogger(name).removeHandler(self)
