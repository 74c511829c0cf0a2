"""The one module that connects Celery signals; every connect has its disconnect."""

from __future__ import annotations

import weakref
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import signals
from celery.exceptions import Reject, TimeLimitExceeded
from opentelemetry import trace

from ..sinks import exposition
from ..sinks.tracing import (
    annotate_instrumentation_span,
    inject_headers,
    opened_by_instrumentation,
    scrub_instrumentation_span,
)
from . import callbacks, log_context
from .celery_retry import celery_max_retries, gave_up_in_celery_retry
from .task import GuardedTask
from .task_guard import SignalGuard
from .workflow import stamp_workflow


class GuardSignals:
    """Celery signal handlers of one ``TelemetryGuard``."""

    def __init__(self, guard: SignalGuard) -> None:
        self.guard = guard
        self._uid = f"telemetry_guard:{id(guard)}"
        self._metrics_server: Any = None
        #: The runs of periodic tasks (``periodic.runs.PeriodicRuns``), when monitored.
        self.periodic: Any = None

    def _pairs(self) -> list[tuple[Any, Any]]:
        return [
            (signals.task_prerun, self.on_task_prerun),
            (signals.task_postrun, self.on_task_postrun),
            (signals.task_failure, self.on_task_failure),
            (signals.task_retry, self.on_task_retry),
            (signals.worker_init, self.on_worker_init),
            (signals.worker_ready, self.on_worker_ready),
            (signals.worker_process_init, self.on_worker_process_init),
            (signals.worker_process_shutdown, self.on_worker_process_shutdown),
            (signals.worker_shutdown, self.on_worker_shutdown),
        ]

    def connect(self) -> None:
        """Connect every handler (replacing those of an earlier guard of the same app).

        Weakly: an app and its guard that nobody uses any more leave no handler behind.
        """
        for signal, handler in self._pairs():
            signal.connect(handler, weak=True, dispatch_uid=self._uid)
        signals.before_task_publish.connect(
            carry_trace_context, weak=False, dispatch_uid="telemetry_guard:publish")
        signals.before_task_publish.connect(
            stamp_workflow, weak=False, dispatch_uid="telemetry_guard:workflow")

    def trace_publishes(self, on: bool) -> None:
        """Whether this guard's trace context goes into the headers of published tasks."""
        if on:
            _TRACING_GUARDS.add(self.guard)
        else:
            _TRACING_GUARDS.discard(self.guard)

    def disconnect(self) -> None:
        """Disconnect every handler and stop the metrics server."""
        for signal, handler in self._pairs():
            signal.disconnect(handler, dispatch_uid=self._uid)
        self.trace_publishes(False)
        self._stop_metrics_server()

    # -- failures and retries of every task, in the process where they happened -----------
    def observes(self, task: Any) -> bool:
        """Whether failures of ``task`` are this guard's to report from Celery's signals."""
        if getattr(task, "app", None) is not self.guard.app:
            return False
        if isinstance(task, GuardedTask):
            return True
        return (getattr(task, "telemetry_guard_observe", True)
                and self.guard.settings.observe_all_tasks)

    def on_task_prerun(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        """Bind the task's ids in structlog's context for the application's own log lines;
        annotate the instrumentation's span of a plain task; note a periodic run's start."""
        if self.periodic is not None:
            self.periodic.started(sender, task_id)
        if not self.observes(sender):
            return
        if signals.task_prerun.receivers[-1][0][0] != self._uid:
            self._run_after_other_receivers()
        if isinstance(sender, GuardedTask):
            return  # its run binds the log context, with its span's ids, in one go
        span = trace.get_current_span()
        log_context.bind_task(task_id, sender.name, span)
        if opened_by_instrumentation(span):
            self._settle_span(span, sender, task_id, scrub=False)

    def on_task_postrun(self, sender: Any = None, task_id: str | None = None,
                        state: str | None = None, **_: Any) -> None:
        """Restore structlog's context as it was before the task; settle the
        instrumentation's span of the task before it ends; note a periodic run's end."""
        if self.periodic is not None:
            self.periodic.ended(sender, task_id, state)
        log_context.unbind_task(task_id)
        span = trace.get_current_span()
        if opened_by_instrumentation(span) and self.observes(sender):
            self._settle_span(span, sender, task_id, scrub=True)

    def _scrub_span(self) -> None:
        """Redact what the instrumentation wrote on its own span (whichever receiver of a
        signal runs first, one of the task's signals comes after it)."""
        span = trace.get_current_span()
        if opened_by_instrumentation(span):
            self._settle_span(span, None, None, scrub=True)

    def _traces(self) -> bool:
        return self.guard.ready and self.guard.settings.tracing

    def _settle_span(self, span: Any, task: Any, task_id: str | None, *, scrub: bool) -> None:
        """The instrumentation's span: annotated when ``task`` is a plain task (a
        GuardedTask's own span code does it), redacted when ``scrub``."""
        if not self._traces():
            return
        try:
            if task is not None and not isinstance(task, GuardedTask):
                request = task.request
                annotate_instrumentation_span(span, task.name, task_id, request.retries or 0,
                                              request)
            if scrub:
                scrub_instrumentation_span(span, self.guard.redactor.redact_text)
        except Exception as exc:
            self.guard.report_error("tracing", exc)

    def _run_after_other_receivers(self) -> None:
        """Move the ``task_prerun`` receiver behind those connected after it (an
        OpenTelemetry instrumentation that opens the task's span in its own), so that from
        the next task on the span is active when it runs."""
        signals.task_prerun.disconnect(self.on_task_prerun, dispatch_uid=self._uid)
        signals.task_prerun.connect(self.on_task_prerun, weak=True, dispatch_uid=self._uid)

    def on_task_failure(self, sender: Any = None, task_id: str | None = None,
                        exception: BaseException | None = None, args: Any = None,
                        kwargs: Any = None, einfo: Any = None, **_: Any) -> None:
        """Report a failed attempt no task hook reported: a plain task's failure, a
        lost child, a hard time limit."""
        if exception is None or isinstance(exception, Reject) or not self.observes(sender):
            return
        self._report_failure(sender, task_id, exception, args, kwargs, einfo)
        self._scrub_span()

    def _report_failure(self, sender: Any, task_id: str | None, exception: BaseException,
                        args: Any, kwargs: Any, einfo: Any) -> None:
        request = sender.request
        if getattr(request, "id", None) != task_id:
            request = _RequestStub(task_id)
        guard = self.guard
        if guard.attempt_recorded(task_id, (request.retries or 0) + 1):
            return
        if isinstance(exception, WorkerLostError):
            reason = "worker_lost"
        elif isinstance(exception, TimeLimitExceeded):
            reason = "time_limit"
        elif gave_up_in_celery_retry(exception):
            reason = "max_retries_exceeded"
        elif isinstance(sender, GuardedTask):
            reason = "failed_outside_task"
        else:
            reason = "not_retryable"
        guard.record_outside_task(
            sender, exception, args=args, kwargs=kwargs, request=request, einfo=einfo,
            decision="give_up", reason=reason, max_retries=celery_max_retries(sender))

    def on_task_retry(self, sender: Any = None, request: Any = None, reason: Any = None,
                      einfo: Any = None, **_: Any) -> None:
        """Report a retry Celery scheduled: ``autoretry_for``, ``self.retry(...)``, or a lost
        child retried by ``task_retry_on_worker_lost``."""
        if isinstance(reason, BaseException) and self.observes(sender):
            self.guard.record_celery_retry(
                sender, reason, request=request, args=getattr(request, "args", ()),
                kwargs=getattr(request, "kwargs", {}), einfo=einfo)
            self._scrub_span()

    # -- worker lifecycle ---------------------------------------------------------------
    def _is_my_worker(self, sender: Any) -> bool:
        return getattr(sender, "app", None) is self.guard.app

    def on_worker_init(self, sender: Any = None, **_: Any) -> None:
        """Main process, before the pool starts: read the settings, clean the multiprocess
        metrics directory."""
        if not self._is_my_worker(sender):
            return
        self.guard.setup()
        path = exposition.multiproc_dir()
        if path is not None:
            try:
                exposition.clean_multiproc_dir(path)
            except Exception as exc:
                self.guard.report_error("metrics", exc)

    def on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        """Main process, pool started: serve ``/metrics`` when a port is configured."""
        if not self._is_my_worker(sender):
            return
        port = self.guard.settings.metrics_port
        if port is None or self._metrics_server is not None:
            return
        try:
            self._metrics_server = exposition.serve_metrics(
                port, self.guard.settings.metrics_address)
            self.guard.log.info("metrics.serving", port=self._metrics_server.server_port)
        except Exception as exc:  # a port in use, an unusable multiprocess directory
            self.guard.report_error("metrics_server", exc)

    def on_worker_process_init(self, **_: Any) -> None:
        """Prefork child, after fork: re-create per-process sink state."""
        self._metrics_server = None  # the parent's server thread does not exist here
        callbacks.mark_pool_child()
        if self.guard.ready:
            self.guard.dispatcher.after_fork()

    def on_worker_process_shutdown(self, **_: Any) -> None:
        """Prefork child exiting: flush buffered records and spans."""
        if self.guard.ready:
            self.guard.dispatcher.flush(timeout=3.0)

    def on_worker_shutdown(self, **_: Any) -> None:
        """Main process exiting: flush, stop serving metrics."""
        if self.guard.ready:
            self.guard.dispatcher.flush(timeout=5.0)
        self._stop_metrics_server()

    @property
    def metrics_port(self) -> int | None:
        """The port ``/metrics`` is served on in this process, if any."""
        return None if self._metrics_server is None else int(self._metrics_server.server_port)

    def _stop_metrics_server(self) -> None:
        server, self._metrics_server = self._metrics_server, None
        if server is not None:
            server.shutdown()
            server.server_close()


#: Guards with tracing on; one process-wide receiver serves them all, so a process with
#: many apps (a test suite) pays for one, not one per guard, on every publish.
_TRACING_GUARDS: weakref.WeakSet[Any] = weakref.WeakSet()


def carry_trace_context(sender: Any = None, headers: Any = None, **_: Any) -> None:
    """``before_task_publish``: carry the producer's trace context in the task headers."""
    guard = next(iter(_TRACING_GUARDS), None) if headers is not None else None
    if guard is None:
        return
    try:
        inject_headers(headers)
    except Exception as exc:
        guard.report_error("tracing", exc)


class _RequestStub:
    """Stands in for a request the main process no longer holds."""

    def __init__(self, task_id: str | None) -> None:
        self.id = task_id
        self.retries = 0
        self.delivery_info: dict[str, Any] = {}
        self.hostname = None
