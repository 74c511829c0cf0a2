"""TelemetryGuard: reads Settings, builds the sinks once, wires Celery's signals."""

from __future__ import annotations

import collections
import threading
from typing import Any

import structlog
from celery.exceptions import Ignore, Reject, Retry

from . import breaker
from .budget import RetryBudget
from .callbacks import ErrorCallback, ErrorCallbacks
from .celery_logs import CeleryLogScrubber
from .classify import Classifier, Severity
from .config import Settings
from .dispatch import Dispatcher
from .events import BreakerChange, Decision, FailureEvent
from .http import resilient_request_task
from .notify import register_notify_task
from .policy import RetryPolicy, cap_below_horizon
from .redact import Redactor
from .routing import Router
from .signals import GuardSignals
from .sinks.base import Sink
from .sinks.email import EmailSink
from .sinks.errorlog import ErrorLogSink
from .sinks.logging import LogSink
from .sinks.metrics import BreakerStateCollector, MetricsSink, get_metrics
from .sinks.sentry import SentrySink
from .sinks.tracing import ExporterFailureHandler, TaskSpan, TracingSink
from .task import build_failure_event

#: How many recorded task ids a process remembers, to never report one failure twice.
RECORDED_IDS = 4096
#: A traceback may be this many times longer than any other value.
TRACEBACK_SIZE_FACTOR = 4


class BudgetLifecycle(Sink):
    """Gives the retry budget the sinks' lifecycle: re-created after fork, flushed, closed."""

    name = "retry_budget"

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget

    def after_fork(self) -> None:
        self.budget.after_fork()

    def flush(self, timeout: float = 5.0) -> None:
        self.budget.flush(timeout)

    def close(self) -> None:
        self.budget.close()


class _NullObserver:
    def observe(self, amount: float) -> None:
        """Accept and drop an observation."""


_NULL_OBSERVER = _NullObserver()


#: The sinks that notify people; breaker trips go only to these.
CHANNEL_SINKS = ("sentry", "email")


def breaker_trip_event(guard: TelemetryGuard, change: BreakerChange) -> FailureEvent:
    """A breaker opening, as a HIGH failure for routing to Sentry and e-mail."""
    severity = Severity.HIGH
    return FailureEvent(
        task_name=f"breaker:{change.breaker}", task_id=None, attempt=1, max_retries=None,
        exception_type="CircuitOpenError", exception_module="telemetry_guard.exceptions",
        message=f"circuit breaker {change.breaker!r} opened ({change.reason or 'tripped'})",
        traceback="", severity=severity, decision="give_up", reason="breaker_opened",
        timestamp=change.timestamp, channels=guard.router.channels_for(severity))


class TelemetryGuard:
    """Wires one Celery app: settings, sinks, signals, metrics endpoint. Idempotent.

    Creating a second guard for the same app replaces the first (its signals
    are disconnected and its sinks flushed), so nothing is reported twice.
    """

    def __init__(self, app: Any, **settings: Any) -> None:
        previous: TelemetryGuard | None = getattr(app, "_telemetry_guard", None)
        self.app = app
        self.settings = Settings.from_app(app, settings)
        self.log = structlog.get_logger("telemetry_guard")
        self.classifier = Classifier()
        self.router = Router(self.settings.routes)
        self.error_callbacks = ErrorCallbacks()
        self.retry_policies: dict[str, RetryPolicy] = {}
        s = self.settings
        self.redactor = Redactor(keys=s.redact_keys, max_value_chars=s.max_value_chars,
                                 max_record_bytes=s.max_record_bytes)
        self.traceback_redactor = Redactor(
            keys=s.redact_keys, max_value_chars=s.max_value_chars * TRACEBACK_SIZE_FACTOR,
            max_record_bytes=s.max_record_bytes)
        self.metrics = get_metrics()
        self.notify_task: Any = None
        self.retry_budget: RetryBudget | None = None
        self.metrics_sink = MetricsSink(self.metrics, max_label_values=s.max_label_values)
        self.dispatcher = Dispatcher([], telemetry_errors=self.metrics.telemetry_errors)
        self.dispatcher.sinks = tuple(self._build_sinks())
        self._recorded: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._recorded_lock = threading.Lock()
        self._capped_warned: set[str] = set()
        self._exporter_handler = (ExporterFailureHandler.install(self.report_error)
                                  if s.tracing else None)
        if previous is not None:
            previous.close()
        self._celery_log_scrubber = (
            CeleryLogScrubber(self.traceback_redactor.redact_text,
                              self.traceback_redactor.redact_tail).install()
            if s.redact_celery_logs else None)
        self.signals = GuardSignals(self)
        self.signals.connect()
        self._connect_breakers()
        app._telemetry_guard = self
        #: The built-in HTTP task (``telemetry_guard.resilient_request``) on this app.
        self.resilient_request = resilient_request_task(app)

    def _connect_breakers(self) -> None:
        """Breakers of this process report through this guard and share its Redis."""
        breaker.CircuitBreaker.neutral = (Retry, Ignore, Reject)
        breaker.set_default_redis_url(self.settings.redis_url)
        breaker.set_transition_listener(self.on_breaker_change)
        breaker.set_call_listener(self._count_breaker_call)
        breaker.set_error_listener(self.report_error)
        BreakerStateCollector.label = self.metrics_sink.breaker_label
        BreakerStateCollector.install()

    def _count_breaker_call(self, name: str, outcome: str) -> None:
        self.metrics_sink.on_breaker_call(name, outcome)

    def on_breaker_change(self, change: BreakerChange) -> None:
        """Tell a breaker transition once; a trip to open is routed like a HIGH failure."""
        self.dispatcher.breaker_change(change)
        if change.to_state == "open":
            self.dispatcher.failure_to(breaker_trip_event(self, change), CHANNEL_SINKS)

    def _build_sinks(self) -> list[Sink]:
        s = self.settings
        sinks: list[Sink] = [LogSink(), self.metrics_sink]
        if s.tracing:
            sinks.append(TracingSink())
        if SentrySink.wanted(s.sentry_dsn):
            sinks.append(SentrySink(self))
        if s.email:
            self.notify_task = register_notify_task(self)
            sinks.append(EmailSink(self))
        if s.retry_budget is not None:
            if not s.redis_url:
                raise ValueError("telemetry_guard_retry_budget needs telemetry_guard_redis_url "
                                 "(the budget is shared by all workers in Redis)")
            self.retry_budget = RetryBudget(s.redis_url, s.retry_budget, key_prefix=s.key_prefix,
                                            report_error=self.report_error)
            sinks.append(BudgetLifecycle(self.retry_budget))
        if s.redis_url:
            sinks.append(ErrorLogSink(
                s.redis_url, key_prefix=s.key_prefix, maxlen=s.error_log_maxlen,
                dead_letter_maxlen=s.dead_letter_maxlen, buffer_size=s.error_log_buffer,
                flush_interval=s.error_log_flush_interval, redactor=self.redactor,
                report_error=self.report_error, on_evicted=self.dead_letters_evicted))
        return sinks

    # -- what GuardedTask asks ----------------------------------------------------------
    @property
    def tracing(self) -> bool:
        """Whether task runs get spans."""
        return self.settings.tracing

    @property
    def keeps_dead_letters(self) -> bool:
        """Whether given-up tasks are stored for replay (needs Redis)."""
        return self.settings.redis_url is not None

    def policy_for(self, task: Any) -> RetryPolicy:
        """Task option ``retry_policy`` → ``guard.retry_policies[name]`` → the app default."""
        policy = getattr(task, "retry_policy", None)
        if policy is None:
            policy = self.retry_policies.get(task.name, self.settings.default_retry_policy)
        return policy  # type: ignore[no-any-return]

    def severity_of(self, task: Any, exc: BaseException) -> Severity:
        """Task option ``severity`` when set, else the classifier's verdict."""
        override = getattr(task, "severity", None)
        if override is not None:
            return Severity.parse(override)
        return self.classifier.classify(exc)

    def cap_countdown(self, task_name: str, delay: float) -> float:
        """Keep a retry countdown below the broker's redelivery horizon; warn once per task."""
        capped = cap_below_horizon(delay, self.settings.redelivery_horizon)
        if capped < delay and task_name not in self._capped_warned:
            self._capped_warned.add(task_name)
            self.log.warning("retry.countdown_capped", task_name=task_name,
                             requested_s=round(delay, 3), capped_s=round(capped, 3),
                             horizon_s=self.settings.redelivery_horizon)
        return capped

    def start_span(self, task: Any, request: Any) -> TaskSpan | None:
        """The span of this task run, or None when tracing is off or broken."""
        if not self.settings.tracing:
            return None
        try:
            return TaskSpan(task.name, request.id, request.retries or 0, request)
        except Exception as exc:
            self.report_error("tracing", exc)
            return None

    def runtime(self, task_name: str, outcome: str) -> Any:
        """The runtime histogram for a task and outcome (a no-op when metrics are broken)."""
        try:
            return self.metrics_sink.runtime(task_name, outcome)
        except Exception as exc:
            self.report_error("metrics", exc)
            return _NULL_OBSERVER

    # -- recording ----------------------------------------------------------------------
    def record(self, event: FailureEvent) -> None:
        """Hand one failure event to every sink (never raises)."""
        if event.task_id:
            with self._recorded_lock:
                self._recorded[event.task_id] = self._recorded.get(event.task_id, 0) + 1
                if len(self._recorded) > RECORDED_IDS:
                    self._recorded.popitem(last=False)
        self.dispatcher.failure(event)
        if event.exception is not None:
            self.error_callbacks.run(event.exception, event, self.report_error)

    def on_error(self, exc_type: type[BaseException], callback: ErrorCallback) -> None:
        """Run ``callback(exc, event)`` in the worker after failures of ``exc_type``.

        Resolved along the exception's MRO (the nearest registered class wins);
        each callback fails open.
        """
        self.error_callbacks.register(exc_type, callback)

    def was_recorded(self, task_id: str | None) -> bool:
        """Whether this process already reported a failure of ``task_id``."""
        return task_id is not None and task_id in self._recorded

    def times_recorded(self, task_id: str | None) -> int:
        """How many failures of ``task_id`` this process reported."""
        return self._recorded.get(task_id, 0) if task_id is not None else 0

    def record_outside_task(self, task: Any, exc: BaseException, *, args: Any, kwargs: Any,
                            request: Any, einfo: Any, decision: Decision, reason: str,
                            delay: float | None = None, max_retries: int | None = None) -> None:
        """Record a failure the task's own thread never saw (a lost child, a hard time
        limit), from Celery's ``einfo``, in the worker's main process. Never raises."""
        try:
            traceback_text = getattr(einfo, "traceback", None)
            self.record(build_failure_event(
                self, task, exc, args=args, kwargs=kwargs, request=request, decision=decision,
                delay=delay, reason=reason, max_retries=max_retries,
                traceback_text=traceback_text if isinstance(traceback_text, str) else None))
        except Exception as error:
            self.report_error("signals", error)

    def dead_letters_evicted(self, task_name: str, count: int) -> None:
        """Count and log dead letters of ``task_name`` its retention removed. Never raises."""
        try:
            self.metrics_sink.dead_letters_evicted(task_name, count)
        except Exception as exc:
            self.report_error("metrics", exc)
        try:
            self.log.warning("dead_letter.evicted", task_name=task_name, count=count,
                             dead_letter_maxlen=self.settings.dead_letter_maxlen)
        except Exception as exc:
            self.report_error("logging", exc)

    def report_error(self, sink: str, exc: BaseException | None) -> None:
        """Count a failing sink in ``telemetry_guard_telemetry_errors_total``."""
        self.dispatcher.report_error(sink, exc)

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def metrics_port(self) -> int | None:
        """The port this process serves ``/metrics`` on, if any."""
        return self.signals.metrics_port

    def flush(self, timeout: float = 5.0) -> None:
        """Deliver buffered records (error log, spans) now."""
        self.dispatcher.flush(timeout)

    def close(self) -> None:
        """Disconnect signals, flush and close sinks."""
        signals = getattr(self, "signals", None)
        if signals is not None:
            signals.disconnect()
        if getattr(self.app, "_telemetry_guard", None) is self:
            breaker.set_transition_listener(None)
            breaker.set_call_listener(None)
            breaker.set_error_listener(None)
            breaker.set_default_redis_url(None)
            if BreakerStateCollector.label is self.metrics_sink.breaker_label:
                BreakerStateCollector.label = None
        if self._exporter_handler is not None:
            self._exporter_handler.uninstall()
        if self._celery_log_scrubber is not None:
            self._celery_log_scrubber.uninstall()
        self.dispatcher.close()
        if getattr(self.app, "_telemetry_guard", None) is self:
            del self.app._telemetry_guard
