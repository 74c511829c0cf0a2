"""structlog events: ``task.failed``, ``task.retry_scheduled``, ``task.gave_up``, ..."""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import structlog
from opentelemetry import trace

from ..core.events import BreakerChange, FailureEvent
from ..core.sink import Sink

LOGGER_NAME = "telemetry_guard"


class LogSink(Sink):
    """Tells each failure as one ``task.failed`` plus a retry or give-up event.

    Keys never collide with stdlib ``LogRecord`` attributes (the exception's text is
    ``exception_message``, not ``message``), so the events pass through
    ``structlog.stdlib.render_to_log_kwargs`` and ``ProcessorFormatter`` set-ups intact.
    """

    name = "logging"

    def __init__(self, logger: Any = None) -> None:
        self.log = logger if logger is not None else structlog.get_logger(LOGGER_NAME)

    def on_failure(self, event: FailureEvent) -> None:
        common = {
            "task_name": event.task_name,
            "task_id": event.task_id,
            "severity": event.severity.label,
            "exception_type": event.exception_type,
            "attempt": event.attempt,
            "hostname": event.hostname,
            "pid": event.pid,
        }
        if event.queue:
            common["queue"] = event.queue
        if event.trace_id:
            common["trace_id"] = event.trace_id
            common["span_id"] = event.span_id
        common.update(workflow_log_fields(event))
        self.log.warning(
            "task.failed", exception_message=event.message, expected=event.expected,
            traceback=event.traceback, **common)
        if event.retried:
            self.log.info(
                "task.retry_scheduled", max_retries=event.max_retries,
                delay_s=round(event.delay_s or 0.0, 3), **common)
        else:
            self.log.error("task.gave_up", reason=event.reason,
                           max_retries=event.max_retries, steps_dropped=event.steps_dropped,
                           **common)
            if event.steps_dropped > 0:
                self.log.error("workflow.broken", task_name=event.task_name,
                               task_id=event.task_id, root_id=event.root_id,
                               root_task=event.root_task, steps_dropped=event.steps_dropped)

    def on_breaker_change(self, change: BreakerChange) -> None:
        self.log.warning("breaker.state_changed", breaker=change.breaker,
                         from_state=change.from_state, to_state=change.to_state,
                         reason=change.reason)


def workflow_log_fields(event: FailureEvent) -> dict[str, Any]:
    """``root_id``, ``parent_id`` (and ``chain_position``, ``chord_id`` when set) of a
    failure that ran in a workflow."""
    fields: dict[str, Any] = {}
    if event.root_id:
        fields["root_id"] = event.root_id
        fields["parent_id"] = event.parent_id
    if event.chain_position is not None:
        fields["chain_position"] = event.chain_position
    if event.chord_id:
        fields["chord_id"] = event.chord_id
    return fields


def configure_logging(stream: IO[str] | None = None, *, level: int = logging.INFO) -> None:
    """Set structlog up to write one JSON object per line, for apps with no set-up of their own.

    Events get ``level``, an ISO 8601 UTC ``timestamp``, and the active span's
    ``trace_id``/``span_id`` when the event has none.
    """
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            add_trace_ids,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=True,
    )


def add_trace_ids(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: add the current span's ids when the event carries none."""
    if "trace_id" in event_dict:
        return event_dict
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict["trace_id"] = format(ctx.trace_id, "032x")
        event_dict["span_id"] = format(ctx.span_id, "016x")
    return event_dict
