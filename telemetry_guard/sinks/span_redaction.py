"""RedactingSpanExporter: the guard's redaction on every span before it leaves the process.

For what other instrumentations record unredacted, such as the exception events, status
descriptions and ``celery.retry.reason`` of opentelemetry-instrumentation-celery. Needs
the OpenTelemetry SDK (imported when spans are exported): the application has it when it
has an exporter to wrap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..core.redact import REDACTED, Redactor

#: Span and event attributes whose text keeps its end when cut (the last frames matter).
TAIL_KEYS = frozenset({"exception.stacktrace"})
#: Default length of one redacted attribute (a stack trace is longer than a message).
MAX_ATTRIBUTE_CHARS = 8192


class RedactingSpanExporter:
    """Wraps a span exporter; what it exports has every string attribute of a span and of
    its events scrubbed (values under a secret key replaced), and the status description
    scrubbed. Spans with nothing to change are passed on as they are."""

    def __init__(self, exporter: Any, redactor: Redactor | None = None) -> None:
        self.exporter = exporter
        self.redactor = redactor or Redactor(max_value_chars=MAX_ATTRIBUTE_CHARS)

    def export(self, spans: Sequence[Any]) -> Any:
        """Export the redacted spans through the wrapped exporter."""
        return self.exporter.export([self.redact_span(span) for span in spans])

    def shutdown(self) -> None:
        """Shut the wrapped exporter down."""
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the wrapped exporter."""
        flush = getattr(self.exporter, "force_flush", None)
        return bool(flush(timeout_millis)) if flush is not None else True

    def redact_span(self, span: Any) -> Any:
        """A copy of a finished span with its texts redacted (the span itself if clean)."""
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.trace import Status

        original = span.attributes  # a new read-only view at each access
        attributes = self._attributes(original)
        events = []
        events_changed = False
        for event in span.events:
            event_attributes = event.attributes
            redacted = self._attributes(event_attributes)
            if redacted is event_attributes:
                events.append(event)
            else:
                events_changed = True
                events.append(Event(event.name, redacted, event.timestamp))
        status = span.status
        description = status.description
        if description:
            scrubbed = self.redactor.redact_text(description)
            if scrubbed != description:
                status = Status(status.status_code, scrubbed)
        if attributes is original and not events_changed and status is span.status:
            return span
        return ReadableSpan(
            name=span.name, context=span.context, parent=span.parent, resource=span.resource,
            attributes=attributes, events=events, links=span.links, kind=span.kind,
            status=status, start_time=span.start_time, end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope)

    def _attributes(self, attributes: Mapping[str, Any] | None) -> Any:
        """Redacted attributes, or the same mapping when nothing changes."""
        if not attributes:
            return attributes
        changed: dict[str, Any] = {}
        for key, value in attributes.items():
            redacted = self._value(key, value)
            if redacted != (tuple(value) if isinstance(value, list) else value):
                changed[key] = redacted
        if not changed:
            return attributes
        return {**attributes, **changed}

    def _value(self, key: str, value: Any) -> Any:
        if isinstance(value, (str, bytes)) or (
                isinstance(value, Sequence) and any(isinstance(v, str) for v in value)):
            if self.redactor.is_secret_key(key):
                return REDACTED
        if isinstance(value, str):
            return (self.redactor.redact_tail(value) if key in TAIL_KEYS
                    else self.redactor.redact_text(value))
        if isinstance(value, Sequence) and not isinstance(value, bytes):
            return tuple(self.redactor.redact_text(v) if isinstance(v, str) else v
                         for v in value)
        return value
