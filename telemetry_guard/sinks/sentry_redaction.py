"""Redaction of Sentry events: exception values and frames, breadcrumbs, messages, extra,
contexts and request data, with the guard's one scrubber."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from sentry_sdk.utils import AnnotatedValue  # type: ignore[attr-defined]

from ..core.redact import Redactor

if TYPE_CHECKING:
    from sentry_sdk.types import Event, Hint

#: The hint key that marks an event the guard built itself.
OWN_EVENT_HINT = "telemetry_guard"

EventDict = dict[str, Any]
ErrorReporter = Callable[[str, BaseException], None]


def redact_event(event: EventDict, redactor: Redactor, *, own: bool = False) -> EventDict:
    """Redact a Sentry event in place: exception values and frames, breadcrumbs, message,
    extra, contexts (but ``trace``) and request data. May raise on a malformed event.

    ``own``: the event is ours; its main exception value and ``celery`` context were built
    from the already redacted FailureEvent and are left as they are (redaction truncates, so
    a second pass would rewrite the truncation markers).
    """
    text = redactor.redact_text
    for key in ("exception", "threads"):
        values = event_values(event.get(key))
        for index, value in enumerate(values):
            main = own and key == "exception" and index == len(values) - 1
            if isinstance(value.get("value"), str) and not main:
                value["value"] = text(value["value"])
            _redact_frames(value.get("stacktrace"), redactor)
    _redact_frames(event.get("stacktrace"), redactor)
    for crumb in event_values(event.get("breadcrumbs")):
        if isinstance(crumb.get("message"), str):
            crumb["message"] = text(crumb["message"])
        if crumb.get("data"):
            crumb["data"] = _redact_value(crumb["data"], redactor)
    if isinstance(event.get("message"), str):
        event["message"] = text(event["message"])
    logentry = event.get("logentry")
    if isinstance(logentry, dict):
        for key in ("message", "formatted"):
            if isinstance(logentry.get(key), str):
                logentry[key] = text(logentry[key])
        if logentry.get("params"):
            logentry["params"] = redactor.redact(logentry["params"])
    if event.get("extra"):
        event["extra"] = _redact_value(event["extra"], redactor)
    contexts = event.get("contexts")
    if isinstance(contexts, dict):
        for name, context in contexts.items():
            if name != "trace" and not (own and name == "celery"):
                contexts[name] = _redact_value(context, redactor)
    request = event.get("request")
    if isinstance(request, dict):
        for key, value in request.items():
            request[key] = _redact_value(value, redactor)
    return event


def event_values(container: Any) -> list[dict[str, Any]]:
    """The dicts in ``container["values"]`` (exceptions, threads, breadcrumbs), if any."""
    values = container.get("values") if isinstance(container, dict) else None
    return [v for v in values if isinstance(v, dict)] if isinstance(values, list) else []


def _redact_frames(stacktrace: Any, redactor: Redactor) -> None:
    frames = stacktrace.get("frames") if isinstance(stacktrace, dict) else None
    for frame in frames if isinstance(frames, list) else ():
        if not isinstance(frame, dict):
            continue
        if frame.get("vars"):
            frame["vars"] = _redact_value(frame["vars"], redactor)
        if isinstance(frame.get("context_line"), str):
            frame["context_line"] = redactor.redact_text(frame["context_line"])
        for key in ("pre_context", "post_context"):
            lines = frame.get(key)
            if isinstance(lines, list):
                frame[key] = [redactor.redact_text(line) for line in lines]


def _redact_value(value: Any, redactor: Redactor) -> Any:
    """``redactor.redact``, keeping the SDK's AnnotatedValue wrapper (events before serialising)."""
    if isinstance(value, AnnotatedValue):
        return AnnotatedValue(redactor.redact(value.value), value.metadata)
    return redactor.redact(value)


def redacted(event: Event, hint: Hint | None, redactor: Redactor,
             report_error: ErrorReporter | None) -> Event | None:
    """The redacted event, or None (dropped: never sent unredacted) when redaction fails."""
    try:
        own = bool(hint and hint.get(OWN_EVENT_HINT))
        return cast("Event", redact_event(cast(EventDict, event), redactor, own=own))
    except Exception as exc:
        if report_error is not None:
            report_error("sentry", exc)
        return None
