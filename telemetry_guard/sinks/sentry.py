"""Sentry: one event per failure routed to the ``sentry`` channel; breadcrumbs for the rest.

Sentry is on when ``telemetry_guard_sentry_dsn`` is set: the sink initialises sentry-sdk
(``send_default_pii`` off, the SDK's default integrations, a ``before_send`` that redacts
every event). It is also on when the application initialised sentry-sdk itself: its client
and options are kept, and our redaction runs after the application's own ``before_send``.
When both, the application's client wins and the setting is ignored (a
``sentry.dsn_ignored`` warning). Neither: Sentry is off and this sink is not built.

How it lives with sentry-sdk's ``CeleryIntegration`` (enabled by the application, or
auto-enabled by ``sentry_sdk.init``), which captures the exception a task raises (mechanism
``celery``). Each failure the guard sees leaves a :class:`Report` on its exception, read by a
global event processor when the integration captures it:

* routed to Sentry: sent once. A GuardedTask's failure reaches this sink before the
  integration sees it, so the sink sends its own event and the integration's copy (and a
  ``logging`` one) is dropped. A plain task's failure reaches the integration first: its
  event is kept, given our tags, fingerprint and level, and the sink sends nothing more.
* not routed (LOW, MEDIUM, the task's ``throws``): with the application's client the
  integration's event is kept, with our tags and fingerprint: the guard never leaves Sentry
  with fewer events than its own integration sends. With a client the guard initialised
  from its DSN, the router decides and the integration's event is dropped. Either way the
  failure becomes a breadcrumb on the global scope, seen in later events of the process.

Every event is redacted. ``Retry``, ``Ignore`` and ``Reject`` never reach the sink, and the
integration skips them as well. Our own ``telemetry_guard`` logger is ignored by the
LoggingIntegration, so ``task.gave_up`` log lines never become Sentry events.

Sending is the SDK's: ``capture_event`` queues the envelope for its transport thread, so the
failing task never waits on Sentry, and Sentry being down never changes a task's outcome.
Outcomes counted: ``sent`` (the SDK accepted the event), ``throttled`` (the SDK declined it:
sampling, ``ignore_errors``, a filter), ``failed`` (capturing raised; re-raised so that the
dispatcher also counts ``telemetry_errors_total{sink="sentry"}``).
"""

from __future__ import annotations

import collections
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, cast

import sentry_sdk
from celery._state import get_current_task
from sentry_sdk.consts import DEFAULT_OPTIONS
from sentry_sdk.integrations.logging import ignore_logger
from sentry_sdk.scope import add_global_event_processor
from sentry_sdk.utils import (  # type: ignore[attr-defined]
    event_from_exception,
)

from ..core.channels import SENTRY
from ..core.classify import Severity
from ..core.events import FailureEvent
from ..core.redact import Redactor
from ..core.sink import Sink
from .sentry_redaction import OWN_EVENT_HINT, ErrorReporter, EventDict, event_values, redacted

if TYPE_CHECKING:
    from sentry_sdk.types import Event, Hint

Level = Literal["fatal", "error", "warning", "info"]

CHANNEL = SENTRY
#: Sentry level of each severity (LOW and MEDIUM reach Sentry only through ``routes``).
LEVELS: dict[Severity, Level] = {Severity.LOW: "info", Severity.MEDIUM: "warning",
                                 Severity.HIGH: "error", Severity.CRITICAL: "fatal"}
#: The ``mechanism.type`` of our events.
MECHANISM = "telemetry_guard"
#: Mechanisms of the SDK integrations that capture a task's exception on their own.
DUPLICATE_MECHANISMS = frozenset({"celery", "logging"})
#: Attribute set on an exception this process reported (or chose not to report).
REPORTED_ATTR = "__telemetry_guard_reported__"
#: Exceptions that refuse attributes are remembered by id; this many at most.
FALLBACK_MARKS = 64
#: ``send_default_pii=False``, said explicitly where the SDK does not deprecate the option
#: (sentry-sdk with ``data_collection`` warns on it; there, leaving it unset means off).
_NO_PII: dict[str, Any] = (
    {} if "data_collection" in DEFAULT_OPTIONS else {"send_default_pii": False})
_LOGGER_NAMES = ("telemetry_guard", "telemetry_guard.*")



class Report:
    """What the guard decided about one exception's failure, kept on the exception.

    True only in this process: it unpickles as False, so an exception sent to a result
    backend is not taken as reported by its reader.
    """

    __slots__ = ("tags", "fingerprint", "level", "routed", "sent", "event_id")

    def __init__(self, *, tags: dict[str, str], fingerprint: list[str], level: Level,
                 routed: bool) -> None:
        self.tags = tags
        self.fingerprint = fingerprint
        self.level = level
        self.routed = routed
        #: The guard sent its own event for this failure.
        self.sent = False
        #: The id of the integration's event that stands for this failure.
        self.event_id: str | None = None

    def __reduce__(self) -> tuple[type[bool], tuple[()]]:
        return (bool, ())

    def enrich(self, event: EventDict) -> None:
        """Give an integration's event our tags and fingerprint (and level, when routed);
        a fingerprint already set (by the integration or the application) is kept."""
        tags = event.get("tags")
        if not isinstance(tags, dict):
            tags = event["tags"] = {}
        for key, value in self.tags.items():
            tags.setdefault(key, value)
        if not event.get("fingerprint"):
            event["fingerprint"] = list(self.fingerprint)
        if self.routed:
            event["level"] = self.level


def workflow_tags(event: FailureEvent) -> dict[str, str]:
    """Tags ``root_id``, ``parent_id`` and, when set, ``chain_position`` and ``chord_id``."""
    values = {"root_id": event.root_id, "parent_id": event.parent_id,
              "chain_position": event.chain_position, "chord_id": event.chord_id}
    return {key: str(value) for key, value in values.items() if value is not None}


def fingerprint_for(mode: str, task_name: str, exception_type: str) -> list[str]:
    """``telemetry_guard_sentry_fingerprint``: Sentry's own grouping split per task
    (``default``), or task and exception type (``task_exception``)."""
    if mode == "task_exception":
        return [task_name, exception_type]
    return ["{{ default }}", task_name]


class _ProcessHooks:
    """The process-wide part: one global event processor, installed once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.installed = False
        #: The SentrySink of each Celery app, for integration events of plain tasks.
        self.sinks: weakref.WeakKeyDictionary[Any, SentrySink] = weakref.WeakKeyDictionary()
        #: The client a SentrySink initialised (its ``before_send`` redacts), if any.
        self.owned_client: Any = None
        #: Redacts events that are not ours when the application owns the client.
        self.redactor: Redactor | None = None
        self.report_error: ErrorReporter | None = None
        #: Reports of exceptions that refuse attributes, by id.
        self.marks: collections.OrderedDict[int, tuple[BaseException, Report]] = (
            collections.OrderedDict())

    def install(self) -> None:
        with self.lock:
            if not self.installed:
                add_global_event_processor(_process_event)
                for name in _LOGGER_NAMES:
                    ignore_logger(name)
                self.installed = True


_hooks = _ProcessHooks()


def attach_report(exc: BaseException, report: Report) -> None:
    """Keep ``report`` with ``exc`` for the event processor."""
    try:
        object.__setattr__(exc, REPORTED_ATTR, report)
    except Exception:
        with _hooks.lock:
            _hooks.marks[id(exc)] = (exc, report)
            if len(_hooks.marks) > FALLBACK_MARKS:
                _hooks.marks.popitem(last=False)


def report_of(exc: object) -> Report | None:
    """The report this process keeps for ``exc``, if any."""
    try:
        report = getattr(exc, REPORTED_ATTR, None)
        if isinstance(report, Report):
            return report
    except Exception:
        pass
    found = _hooks.marks.get(id(exc))
    return found[1] if found is not None and found[0] is exc else None


def _mechanism_types(event: EventDict) -> set[str]:
    types = set()
    for value in event_values(event.get("exception")):
        mechanism = value.get("mechanism")
        if isinstance(mechanism, dict) and isinstance(mechanism.get("type"), str):
            types.add(mechanism["type"])
    return types


def _process_event(event: Event, hint: Hint) -> Event | None:
    """Global event processor: settle an integration's event for a failure the guard saw
    (drop, or keep with our tags and fingerprint), and make our redaction the application
    client's last step."""
    hint = hint or {}
    client = sentry_sdk.get_client()
    owned = client is _hooks.owned_client
    if not owned:
        _redact_last(client)
    if hint.get(OWN_EVENT_HINT) or event.get("type") in ("transaction", "check_in"):
        return event
    exc_info = hint.get("exc_info")
    exc = exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) == 3 else None
    mechanisms = _mechanism_types(cast(EventDict, event)) & DUPLICATE_MECHANISMS
    if exc is None or not mechanisms:
        return event
    report = report_of(exc)
    if report is None and "celery" in mechanisms:
        report = _report_for_running_task(exc)
    if report is None:
        return event
    if report.sent or (owned and not report.routed):
        return None  # sent once by the guard, or not routed to Sentry by its router
    report.enrich(cast(EventDict, event))
    if "celery" in mechanisms and report.event_id is None:
        report.event_id = str(event.get("event_id") or "") or None
    return event


def _report_for_running_task(exc: BaseException) -> Report | None:
    """The report of a plain task's failure the integration captures before Celery's
    ``task_failure`` signal tells the guard: decided here, the same way."""
    task = get_current_task()
    app = getattr(task, "app", None)
    sink = _hooks.sinks.get(app) if app is not None else None
    if sink is None or not sink.observes(task):
        return None
    try:
        severity, _, channels = sink.routing_of(task, exc)
        delivery_info = getattr(task.request, "delivery_info", None) or {}
        report = sink.report(task.name, severity, type(exc).__name__,
                             delivery_info.get("routing_key"), CHANNEL in channels)
    except Exception as error:
        sink.report_error(CHANNEL, error)
        return None
    attach_report(exc, report)
    return report


class _RedactingBeforeSend:
    """The application's ``before_send``, then our redaction: the last step before sending
    (after every event processor, such as the one with which ``CeleryIntegration`` adds the
    task's arguments)."""

    __slots__ = ("wrapped",)

    def __init__(self, wrapped: Callable[[Event, Hint], Event | None] | None) -> None:
        self.wrapped = wrapped

    def __call__(self, event: Event, hint: Hint) -> Event | None:
        if self.wrapped is not None:
            result = self.wrapped(event, hint)
            if result is None:
                return None
            event = result
        redactor = _hooks.redactor
        if redactor is None:
            return event
        return redacted(event, hint, redactor, _hooks.report_error)


def _redact_last(client: Any) -> None:
    """Chain our redaction after the application client's ``before_send``, once."""
    options = getattr(client, "options", None)
    if isinstance(options, dict) and _hooks.redactor is not None and not isinstance(
            options.get("before_send"), _RedactingBeforeSend):
        options["before_send"] = _RedactingBeforeSend(options.get("before_send"))


def _application_client() -> Any:
    """The active sentry-sdk client the application initialised, or None."""
    client = sentry_sdk.get_client()
    if (client.is_active() and getattr(client, "transport", None) is not None
            and client is not _hooks.owned_client):
        return client
    return None


class SentrySink(Sink):
    """Reports routed failures to Sentry: tags, fingerprint, level, a ``celery`` context."""

    name = CHANNEL

    def __init__(self, app: Any, *, dsn: str | None, fingerprint: str, redactor: Redactor,
                 metrics: Any, log: Any, report_error: ErrorReporter,
                 routing_of: Callable[[Any, BaseException], Any],
                 observes: Callable[[Any], bool]) -> None:
        """``routing_of(task, exc)`` and ``observes(task)`` decide for plain tasks' failures
        that the integration captures before the guard hears of them."""
        self.app = app
        self.fingerprint = fingerprint
        self.redactor = redactor
        self.metrics = metrics
        self.log = log
        self.report_error = report_error
        self.routing_of = routing_of
        self.observes = observes
        self._client: Any = None
        app_client = _application_client()
        if dsn and app_client is None:
            def before_send(event: Event, hint: Hint) -> Event | None:
                return redacted(event, hint, redactor, report_error)

            sentry_sdk.init(dsn=dsn, before_send=before_send, **_NO_PII)
            self._client = _hooks.owned_client = sentry_sdk.get_client()
        elif dsn and str(getattr(app_client, "dsn", None) or "") != dsn:
            log.warning("sentry.dsn_ignored", channel=CHANNEL,
                              reason="sentry-sdk already initialised by the application")
        _hooks.redactor = self.redactor
        _hooks.report_error = report_error
        _hooks.sinks[app] = self
        _hooks.install()

    @staticmethod
    def wanted(dsn: str | None) -> bool:
        """Whether Sentry reporting is on: a DSN is set or the application's client is active."""
        return bool(dsn) or _application_client() is not None

    def report(self, task_name: str, severity: Severity, exception_type: str,
               queue: str | None, routed: bool) -> Report:
        """The tags, fingerprint and level of one failure's events."""
        tags = {"task_name": task_name, "severity": severity.label,
                "exception_type": exception_type}
        if queue:
            tags["queue"] = queue
        return Report(tags=tags, level=LEVELS[severity], routed=routed, fingerprint=fingerprint_for(
            self.fingerprint, task_name, exception_type))

    def on_failure(self, event: FailureEvent) -> None:
        routed = CHANNEL in event.channels
        exc = event.exception
        report = report_of(exc) if exc is not None else None
        if report is None or report.event_id is None:  # else: the integration's, just now
            report = self.report(event.task_name, event.severity, event.exception_type,
                                 event.queue, routed)
            if exc is not None:
                attach_report(exc, report)
        report.tags.update(workflow_tags(event))
        if not routed:
            self._breadcrumb(event)
            return
        severity = event.severity.label
        fields = {"channel": CHANNEL, "task_name": event.task_name, "task_id": event.task_id,
                  "severity": severity}
        if report.event_id is not None:  # the integration's event stands for this failure
            self.metrics.notifications.labels(CHANNEL, severity, "sent").inc()
            self.log.info("notification.sent", event_id=report.event_id, **fields)
            return
        try:
            event_id = self._capture(event, report)
        except Exception as exc:
            self.metrics.notifications.labels(CHANNEL, severity, "failed").inc()
            self.log.warning("notification.failed", error=type(exc).__name__, **fields)
            raise
        report.sent = True
        outcome = "sent" if event_id else "throttled"
        self.metrics.notifications.labels(CHANNEL, severity, outcome).inc()
        self.log.info(f"notification.{outcome}", event_id=event_id, **fields)

    @staticmethod
    def _breadcrumb(event: FailureEvent) -> None:
        """A failure not routed to Sentry, as a breadcrumb of later events in this process
        (on the global scope: the integration clears each task's own breadcrumbs)."""
        sentry_sdk.get_global_scope().add_breadcrumb({
            "type": "error", "category": "telemetry_guard", "level": LEVELS[event.severity],
            "message": f"{event.task_name}: {event.exception_type}: {event.message}",
            "data": {"task_id": event.task_id, "severity": event.severity.label,
                     "attempt": event.attempt, "decision": event.decision,
                     "reason": event.reason, "exception_type": event.exception_type},
        })

    def _capture(self, event: FailureEvent, report: Report) -> str | None:
        exc = event.exception
        mechanism = {"type": MECHANISM, "handled": event.retried}
        payload: Event
        hint: Hint
        if exc is not None:
            payload, hint = event_from_exception(
                (type(exc), exc, exc.__traceback__),
                client_options=sentry_sdk.get_client().options, mechanism=mechanism)
            values = payload["exception"]["values"]
            if values:
                values[-1]["value"] = event.message
        else:
            payload = {"exception": {"values": [{
                "type": event.exception_type, "module": event.exception_module,
                "value": event.message, "mechanism": mechanism}]}}
            hint = {}
        hint[OWN_EVENT_HINT] = True
        payload["level"] = report.level
        payload["fingerprint"] = list(report.fingerprint)
        with sentry_sdk.new_scope() as scope:
            scope.set_level(report.level)
            scope.fingerprint = list(report.fingerprint)
            for key, value in report.tags.items():
                scope.set_tag(key, value)
            scope.set_context("celery", {
                "task_id": event.task_id, "retries": event.attempt - 1,
                "decision": event.decision, "args": event.args, "kwargs": event.kwargs})
            if exc is None or exc.__traceback__ is None:
                scope.set_extra("traceback", event.traceback)
            # Redacted once, in the client's before_send: after every event processor
            # (CeleryIntegration adds extra), see _redact_last.
            return scope.capture_event(payload, hint=hint)

    def flush(self, timeout: float = 5.0) -> None:
        sentry_sdk.flush(timeout=timeout)

    def close(self) -> None:
        """Flush; close the client this sink initialised and turn Sentry off if still current."""
        if _hooks.redactor is self.redactor:
            _hooks.redactor = _hooks.report_error = None
        if _hooks.sinks.get(self.app) is self:
            del _hooks.sinks[self.app]
        client, self._client = self._client, None
        if client is None:
            sentry_sdk.flush()
            return
        current = sentry_sdk.get_client() is client
        client.close()
        if current:
            sentry_sdk.get_global_scope().set_client(None)
        if _hooks.owned_client is client:
            _hooks.owned_client = None
