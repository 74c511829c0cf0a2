"""TelemetryGuard: reads Settings, builds the sinks once, wires Celery's signals."""

from __future__ import annotations

import collections
import threading
from typing import Any

import structlog
from billiard.exceptions import WorkerLostError

from .. import breaker
from ..core.channels import CHANNELS
from ..core.classify import DEFAULT_CLASSIFIER, Classifier, Severity
from ..core.dispatch import Dispatcher
from ..core.events import BreakerChange, Decision, FailureEvent
from ..core.pipeline import EventBuilder, Routing
from ..core.policy import RetryPolicy, cap_below_horizon
from ..core.redact import Redactor
from ..core.routing import Router
from ..core.sink import Sink
from ..notify import NOTIFY_TASK_NAME, Notifier, register_notify_task
from ..periodic.monitor import PeriodicMonitor
from ..sinks.breaker_states import BreakerStateCollector
from ..sinks.email import EmailSink
from ..sinks.errorlog import ErrorLogSink
from ..sinks.logging import LogSink
from ..sinks.metrics import MetricsSink, get_metrics
from ..sinks.sentry import SentrySink
from ..sinks.tracing import ExporterFailureHandler, TaskSpan, TracingSink, current_ids
from ..stores.budget import BudgetLifecycle, RetryBudget
from ..stores.redis_client import use_redis_options
from .callbacks import ErrorCallback, ErrorCallbacks
from .celery_logs import CeleryLogScrubber
from .celery_retry import (
    celery_max_retries,
    explicit_celery_retry_options,
    gave_up_in_celery_retry,
    policy_from_celery_options,
    retried_exception,
    retry_delay,
)
from .config import Settings, check_budget_has_redis
from .signals import GuardSignals
from .task import GuardedTask
from .task_guard import APP_ATTRIBUTE, guard_of
from .workflow import chord_callback_failure, workflow_fields

#: How many recorded task ids a process remembers, to never report one failure twice.
RECORDED_IDS = 4096
#: A traceback may be this many times longer than any other value.
TRACEBACK_SIZE_FACTOR = 4


class _NullObserver:
    def observe(self, amount: float) -> None:
        """Accept and drop an observation."""


_NULL_OBSERVER = _NullObserver()


class TelemetryGuard:
    """Wires one Celery app: settings, sinks, signals, metrics endpoint. Idempotent.

    Creating a second guard for the same app replaces the first (its signals
    are disconnected and its sinks flushed), so nothing is reported twice.
    """

    def __init__(self, app: Any, **settings: Any) -> None:
        previous = guard_of(app)
        self.app = app
        #: Keyword settings, checked now; the rest is read when the app is configured.
        self._overrides = Settings.check_overrides(settings)
        self.log = structlog.get_logger("telemetry_guard")
        #: Rules registered here come first, then the process-wide ones (``classify``).
        self.classifier = Classifier(fallback=DEFAULT_CLASSIFIER)
        self.error_callbacks = ErrorCallbacks()
        self.retry_policies: dict[str, RetryPolicy] = {}
        self._recorded: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._attempts: collections.OrderedDict[tuple[str, int], None] = (
            collections.OrderedDict())
        self._recorded_lock = threading.Lock()
        self._capped_warned: set[str] = set()
        self._setup_lock = threading.RLock()
        self._celery_policies: dict[str, RetryPolicy] = {}
        if previous is not None:
            previous.close()
        self.signals = GuardSignals(self)
        self.signals.connect()
        setattr(app, APP_ATTRIBUTE, self)
        uid = f"telemetry_guard:{id(self)}"
        app.on_after_configure.connect(self._on_app_configured, weak=False, dispatch_uid=uid)
        app.on_after_finalize.connect(self._on_app_finalized, weak=False, dispatch_uid=uid)
        if getattr(app, "configured", False):
            self.setup()
        else:  # a breaker used before the app is configured sets the guard up
            breaker.set_pending_setup(self.setup)
        if getattr(app, "finalized", False):
            self._register_tasks()

    # -- set-up, once the app's configuration is final ------------------------------------
    #: Members built from the settings, on first use or when the app is configured.
    _BUILT = frozenset({
        "settings", "router", "redactor", "traceback_redactor", "events", "metrics",
        "metrics_sink",
        "dispatcher", "retry_budget", "_exporter_handler",
        "_celery_log_scrubber", "periodic",
    })

    def __getattr__(self, name: str) -> Any:
        if name in TelemetryGuard._BUILT and not self.__dict__.get("_setting_up"):
            self.setup()
            if name in self.__dict__:
                return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def ready(self) -> bool:
        """Whether the settings were read and the sinks built."""
        return bool(self.__dict__.get("_ready"))

    def _on_app_configured(self, sender: Any = None, **_: Any) -> None:
        self.setup()

    def _on_app_finalized(self, sender: Any = None, **_: Any) -> None:
        self._register_tasks()

    def setup(self) -> None:
        """Read the settings (which configures the app) and build the sinks, once.

        Done when the app is configured, when the worker starts, or on first use.
        """
        with self._setup_lock:
            if self.ready or self.__dict__.get("_closed") or self.__dict__.get("_setting_up"):
                return
            self._setting_up = True
            try:
                self._build()
            finally:
                self._setting_up = False
        if getattr(self.app, "finalized", False):
            self._register_tasks()

    def _build(self) -> None:
        """Everything the settings decide: redactors, router, sinks, breaker wiring."""
        s = Settings.from_app(self.app, self._overrides)
        check_budget_has_redis(s.retry_budget, s.redis_url)
        if s.redis_url:
            use_redis_options(s.redis_url, s.redis_options)
        self.settings = s
        self.router = Router(s.routes)
        self.redactor = Redactor(keys=s.redact_keys, max_value_chars=s.max_value_chars,
                                 max_record_bytes=s.max_record_bytes)
        self.traceback_redactor = Redactor(
            keys=s.redact_keys, max_value_chars=s.max_value_chars * TRACEBACK_SIZE_FACTOR,
            max_record_bytes=s.max_record_bytes)
        self.events = EventBuilder(
            classifier=self.classifier, router=self.router, redactor=self.redactor,
            traceback_redactor=self.traceback_redactor,
            keeps_dead_letters=s.redis_url is not None, trace_ids=current_ids,
            workflow=workflow_fields)
        self.metrics = get_metrics(s.metrics)
        self.retry_budget = None
        self.metrics_sink = MetricsSink(self.metrics, max_label_values=s.max_label_values)
        self.dispatcher = Dispatcher([], telemetry_errors=self.metrics.telemetry_errors)
        self.dispatcher.sinks = tuple(self._build_sinks())
        self._exporter_handler = (ExporterFailureHandler.install(self.report_error)
                                  if s.tracing else None)
        self._celery_log_scrubber = (
            CeleryLogScrubber(self.traceback_redactor.redact_text,
                              self.traceback_redactor.redact_tail).install()
            if s.redact_celery_logs else None)
        self._connect_breakers()
        self.periodic = PeriodicMonitor.build(self)
        self.signals.trace_publishes(s.tracing)
        self._ready = True

    def _register_tasks(self) -> None:
        """Register the guard's tasks once the app is finalized (never before: Celery's
        lazy task creation and ``task_annotations`` stay as the user set them)."""
        if self.__dict__.get("_closed"):
            return
        if self.ready and self.settings.email and not self.__dict__.get("_notify_registered"):
            notifier = Notifier(self.settings, metrics=self.metrics, log=self.log,
                                dead_letters_evicted=self.dead_letters_evicted)
            register_notify_task(self.app, notifier, queue=self.settings.notification_queue)
            self._notify_registered = True

    @property
    def notify_task(self) -> Any:
        """``telemetry_guard.notify`` on this app, None when e-mail is off (like
        ``app.tasks``, this finalizes the app)."""
        if not self.settings.email:
            return None
        return self.app.tasks[NOTIFY_TASK_NAME]

    @property
    def resilient_request(self) -> Any:
        """The HTTP task, once ``register_resilient_request(app)`` registered it (it is opt-in)."""
        from ..http import DEFAULT_NAME as HTTP_TASK_NAME  # an extra: imported when asked for

        task = self.app.tasks.get(HTTP_TASK_NAME)
        if task is None:
            raise LookupError(f"{HTTP_TASK_NAME} is opt-in: call register_resilient_request(app)")
        return task

    def _connect_breakers(self) -> None:
        """Breakers of this process report through this guard and share its Redis."""
        breaker.set_pending_setup(None)
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
            self.dispatcher.failure_to(self.events.breaker_trip(change), CHANNELS)  # people only

    def _build_sinks(self) -> list[Sink]:
        s = self.settings
        sinks: list[Sink] = [LogSink(), self.metrics_sink]
        if s.tracing:
            sinks.append(TracingSink())
        if SentrySink.wanted(s.sentry_dsn):
            sinks.append(SentrySink(
                self.app, dsn=s.sentry_dsn, fingerprint=s.sentry_fingerprint,
                redactor=self.redactor, metrics=self.metrics, log=self.log,
                report_error=self.report_error, routing_of=self.routing_of,
                observes=self.signals.observes))
        if s.email:
            sinks.append(EmailSink(self.app, queue=s.notification_queue,
                                   task_name=NOTIFY_TASK_NAME, log=self.log,
                                   report_error=self.report_error))
        if s.retry_budget is not None:
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
        """Task option ``retry_policy`` → ``guard.retry_policies[name]`` → Celery's retry
        options set on the task (``autoretry_for``, ``max_retries``, …) → the app default."""
        policy = getattr(task, "retry_policy", None)
        if policy is not None:
            return policy  # type: ignore[no-any-return]
        name = task.name
        policy = self.retry_policies.get(name)
        if policy is not None:
            return policy
        policy = self._celery_policies.get(name)
        if policy is None:
            if explicit_celery_retry_options(type(task), GuardedTask):
                policy = policy_from_celery_options(task)
            else:
                policy = self.settings.default_retry_policy
            self._celery_policies[name] = policy
        return policy

    def severity_of(self, task: Any, exc: BaseException) -> Severity:
        """Task option ``severity`` when set, else the classifier's verdict."""
        return self.events.severity_of(task, exc)

    def routing_of(self, task: Any, exc: BaseException) -> Routing:
        """Severity, expected, channels of ``exc`` escaping ``task`` (a give-up), as the
        failure event Celery's signal brings next will say."""
        reason = "max_retries_exceeded" if gave_up_in_celery_retry(exc) else "not_retryable"
        return self.events.routing(task, exc, reason)

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
            self._remember_attempt(event.task_id, event.attempt)
        self.dispatcher.failure(event)
        callback_failure = chord_callback_failure(event)
        if callback_failure is not None:
            self.dispatcher.failure(callback_failure)
        if event.exception is not None:
            self.error_callbacks.run(event.exception, event, self.report_error)

    def on_error(self, exc_type: type[BaseException], callback: ErrorCallback) -> None:
        """Run ``callback(exc, event)`` in the worker after failures of ``exc_type``.

        Resolved along the exception's MRO (the nearest registered class wins);
        each callback fails open.
        """
        self.error_callbacks.register(exc_type, callback)

    def _remember_attempt(self, task_id: str, attempt: int) -> None:
        with self._recorded_lock:
            self._attempts[(task_id, attempt)] = None
            if len(self._attempts) > RECORDED_IDS:
                self._attempts.popitem(last=False)

    def mark_attempt_handled(self, request: Any) -> None:
        """Say this attempt needs no event from Celery's signals (e.g. a breaker wait)."""
        task_id = getattr(request, "id", None)
        if task_id:
            self._remember_attempt(task_id, (getattr(request, "retries", 0) or 0) + 1)

    def attempt_recorded(self, task_id: str | None, attempt: int) -> bool:
        """Whether this process already reported (or handled) attempt ``attempt`` of a task."""
        return task_id is not None and (task_id, attempt) in self._attempts

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
            self.record(self.events.build(
                task, exc, args=args, kwargs=kwargs, request=request, decision=decision,
                delay=delay, reason=reason, max_retries=max_retries,
                traceback_text=traceback_text if isinstance(traceback_text, str) else None))
        except Exception as error:
            self.report_error("signals", error)

    def record_celery_retry(self, task: Any, retry: BaseException, *, request: Any, args: Any,
                            kwargs: Any, einfo: Any = None) -> None:
        """Report a retry Celery scheduled (``autoretry_for``, ``self.retry(...)``, a lost
        child retried), once per attempt. Never raises."""
        attempt = (getattr(request, "retries", 0) or 0) + 1
        if self.attempt_recorded(getattr(request, "id", None), attempt):
            return
        exc = retried_exception(retry)
        self.record_outside_task(
            task, exc, args=args, kwargs=kwargs, request=request, einfo=einfo,
            decision="retry", reason="worker_lost" if isinstance(exc, WorkerLostError) else "",
            delay=retry_delay(retry), max_retries=celery_max_retries(task))

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
        self._closed = True
        signals = self.__dict__.get("signals")
        if signals is not None:
            signals.disconnect()
        uid = f"telemetry_guard:{id(self)}"
        self.app.on_after_configure.disconnect(dispatch_uid=uid)
        self.app.on_after_finalize.disconnect(dispatch_uid=uid)
        current = guard_of(self.app) is self
        if current:
            breaker.set_pending_setup(None)
        if self.ready:
            if current:
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
            if self.periodic is not None:
                self.periodic.close()
            self.dispatcher.close()
        if current:
            delattr(self.app, APP_ATTRIBUTE)
