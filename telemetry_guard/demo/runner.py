"""Runs the demo: private servers, a guarded app, an in-process worker, the view, the summary.

The broker is a private ``redis-server`` on a free port when the binary is on PATH (the
error log, dead letters, breakers and throttles then live in real Redis), otherwise
Celery's in-memory transport. Either way the worker runs in this process (solo pool,
in a thread) and consumes the demo's queue and the notification queue.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import redis
from celery.contrib.testing.worker import start_worker

from ..core.events import FailureEvent
from ..integration.guard import TelemetryGuard
from ..sinks.exposition import serve_metrics
from ..sinks.logging import configure_logging
from ..stores.redis_client import new_redis_client
from .services import DownstreamService, MailCatcher, RedisServer
from .summary import DemoResult, render_summary
from .view import BreakerTransition, LiveView, LogTail, PlainView, Snapshot, make_view, read_metrics
from .workload import DEFAULT_QUEUE, Schedule, Workload, build_app

DEFAULT_DURATION = 60.0
#: Longest wait after the workload for retries and mails still in flight.
DRAIN_SECONDS = 5.0
#: Producer loop period, and how often the view is redrawn.
STEP_SECONDS = 0.05
VIEW_SECONDS = 1.0
EXIT_INTERRUPTED = 130
#: Loggers whose own error lines would scroll the view away (the guard reports instead).
QUIET_LOGGERS = ("celery", "kombu", "amqp", "aiosmtpd", "mail.log", "asyncio")


class DemoSetupError(Exception):
    """The demo could not start (a port taken, a log file not writable): one line to show."""


@dataclass(frozen=True)
class DemoOptions:
    """What the command line may change."""

    duration: float = DEFAULT_DURATION
    metrics_port: int = 0
    log_file: str | None = None


class NewestFailure:
    """An error callback keeping the newest failure as the sinks got it (redacted)."""

    def __init__(self) -> None:
        self.event: FailureEvent | None = None

    def __call__(self, exc: BaseException, event: FailureEvent) -> None:
        self.event = event


def run_demo(options: DemoOptions, out: IO[str] | None = None) -> int:
    """Run the demo; returns the exit code (0, or 130 after Ctrl-C)."""
    out = out or sys.stdout
    workdir = tempfile.mkdtemp(prefix="telemetry-guard-demo-")
    cleanup: list[Any] = []
    try:
        return _run(options, out, workdir, cleanup)
    except KeyboardInterrupt:  # during start-up or tear-down
        print("\ninterrupted", file=out, flush=True)
        return EXIT_INTERRUPTED
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
        try:
            for stop in reversed(cleanup):
                try:
                    stop()
                except Exception as exc:  # one failing stop must not keep the others running
                    print(f"warning: could not stop {stop}: {exc}", file=sys.stderr)
            shutil.rmtree(workdir, ignore_errors=True)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _quiet_celery() -> None:
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.CRITICAL)
        logger.propagate = False
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())


def _run(options: DemoOptions, out: IO[str], workdir: str, cleanup: list[Any]) -> int:
    started_wall = time.time()
    log_path = Path(options.log_file) if options.log_file else Path(workdir) / "events.jsonl"
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_stream = log_path.open("a", buffering=1, encoding="utf-8")
    except OSError as exc:
        raise DemoSetupError(f"cannot write the log file {log_path}: {exc}") from None
    cleanup.append(log_stream.close)
    # An existing file is appended to: the tail reads only this run's events.
    tail = LogTail(log_path, started_wall, offset=log_stream.tell())
    configure_logging(stream=log_stream)
    _quiet_celery()

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    schedule = Schedule.for_duration(options.duration)
    server = _start_redis(workdir, cleanup, say)
    if server is not None:
        broker, backend = server.url, server.url
        transport = f"a private redis-server ({server.url})"
    else:
        broker, backend = "memory://", "cache+memory://"
        transport = "Celery's in-memory transport (no redis-server on PATH)"
    downstream = DownstreamService().start()
    cleanup.append(downstream.stop)
    mail = _start_mail_catcher(say)
    if mail is not None:
        cleanup.append(mail.stop)

    app = build_app(broker, backend)
    cleanup.append(lambda: _close_app(app))
    guard = TelemetryGuard(app, **({"email": mail.settings()} if mail is not None else {}))
    cleanup.append(guard.close)
    newest = NewestFailure()
    guard.on_error(Exception, newest)
    workload = Workload(app, guard, downstream, schedule,
                        breaker_storage="redis" if server is not None else "memory")
    workload.tally.connect()
    cleanup.append(workload.tally.disconnect)
    try:
        metrics = serve_metrics(options.metrics_port, "127.0.0.1")
    except OSError as exc:
        raise DemoSetupError(
            f"cannot serve /metrics on 127.0.0.1:{options.metrics_port}: {exc}") from None
    cleanup.append(lambda: (metrics.shutdown(), metrics.server_close()))
    metrics_url = f"http://127.0.0.1:{metrics.server_port}/metrics"
    smtp = f"{mail.host}:{mail.port}" if mail is not None else "(off)"

    say(f"telemetry_guard demo: {options.duration:g} s on {transport}")
    say(f"  /metrics           {metrics_url}")
    say(f"  JSON logs          {log_path}")
    say(f"  inventory service  {downstream.url('/inventory/<sku>')}  (answers 503 from "
        f"{schedule.outage_start:.1f} s to {schedule.outage_end:.1f} s)")
    say(f"  SMTP catcher       {smtp}")
    say()

    queues = [guard.settings.notification_queue, DEFAULT_QUEUE]
    view = make_view(title="telemetry_guard demo", stream=out,
                     links={"/metrics": metrics_url, "JSON logs": str(log_path)})
    snapshot = Snapshot(duration=options.duration)
    interrupted = False
    start = time.monotonic()
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="CRITICAL",
                      queues=queues, shutdown_timeout=15.0):
        with view:
            try:
                _drive(workload, view, tail, mail, snapshot, start, downstream)
            except KeyboardInterrupt:
                interrupted = True
            snapshot.elapsed = time.monotonic() - start
            view.update(snapshot)
        if interrupted:
            say("stopping: worker, servers ...")
        workload.stop_worker_soon()
    guard.flush()
    _take(snapshot, workload, tail, mail, downstream, time.monotonic() - start)
    _show_new_mail(mail, view)
    record, source = _newest_record(guard, server, newest)
    result = DemoResult(
        snapshot=snapshot, transport=transport, interrupted=interrupted,
        transitions=list(tail.transitions), mails=list(mail.messages) if mail else [],
        smtp=smtp, metrics_url=metrics_url, log_path=str(log_path),
        log_kept=options.log_file is not None, log_counts=tail.counts,
        record=record, record_source=source)
    say()
    for line in render_summary(result):
        say(line)
    return EXIT_INTERRUPTED if interrupted else 0


def _close_app(app: Any) -> None:
    """Release the app's connections while the broker still runs."""
    app.close()
    gc.collect()  # drop results while their backend can still be reached


def _start_redis(workdir: str, cleanup: list[Any], say: Any) -> RedisServer | None:
    """A private redis-server, or None (no binary, or it would not start: memory transport)."""
    binary = RedisServer.available()
    if binary is None:
        return None
    server = RedisServer(workdir, binary)
    cleanup.append(server.stop)
    try:
        return server.start()
    except (OSError, RuntimeError) as exc:
        say(f"note: redis-server would not start ({exc}); using the memory transport")
        return None


def _start_mail_catcher(say: Any) -> MailCatcher | None:
    try:
        return MailCatcher().start()
    except ImportError:
        say("note: aiosmtpd is not installed, so no e-mail is sent "
            "(pip install 'telemetry-guard[demo]')")
        return None


def _drive(workload: Workload, view: LiveView | PlainView, tail: LogTail,
           mail: MailCatcher | None, snapshot: Snapshot, start: float,
           downstream: DownstreamService) -> None:
    """The workload for its duration, then a short drain; the view redrawn each second."""
    duration = workload.schedule.duration
    next_view = 0.0
    drain_until: float | None = None
    while True:
        elapsed = time.monotonic() - start
        if elapsed < duration:
            workload.step(elapsed)
        else:
            if drain_until is None:
                drain_until = elapsed + DRAIN_SECONDS
                downstream.down = False
            settled = workload.tally.pending <= 0 and _mails_settled(snapshot, mail)
            if settled or elapsed >= drain_until:
                return
        if elapsed >= next_view:
            next_view = elapsed + VIEW_SECONDS
            for t in _take(snapshot, workload, tail, mail, downstream, elapsed):
                view.note(f"+{t.at:5.1f}s  breaker {t.breaker}: {t.from_state} -> {t.to_state}"
                          f" ({t.reason})")
            view.update(snapshot)
        _show_new_mail(mail, view)
        time.sleep(STEP_SECONDS)


def _take(snapshot: Snapshot, workload: Workload, tail: LogTail, mail: MailCatcher | None,
          downstream: DownstreamService, elapsed: float) -> list[BreakerTransition]:
    """Refresh ``snapshot`` from the registry, the tally, the log and the catcher.

    Returns the breaker transitions logged since the last call.
    """
    transitions = tail.poll()
    read_metrics(snapshot)
    tally = workload.tally
    snapshot.elapsed = elapsed
    snapshot.sent, snapshot.succeeded, snapshot.fallbacks = (
        tally.sent, tally.succeeded, tally.fallbacks)
    snapshot.mails = len(mail.messages) if mail is not None else 0
    snapshot.log_events = sum(tail.counts.values())
    snapshot.downstream_down = downstream.down
    return transitions


def _mails_settled(snapshot: Snapshot, mail: MailCatcher | None) -> bool:
    """No mail still on its way: every critical give-up was mailed or throttled."""
    if mail is None:
        return True
    return snapshot.notifications.get("sent", 0) <= len(mail.messages)


def _show_new_mail(mail: MailCatcher | None, view: LiveView | PlainView) -> None:
    if mail is None:
        return
    while not mail.arrivals.empty():
        caught = mail.arrivals.get_nowait()
        view.note(f"mail caught: {caught.subject}  (to {', '.join(caught.rcpt_tos)})")


def _newest_record(guard: TelemetryGuard, server: RedisServer | None,
                   newest: NewestFailure) -> tuple[dict[str, Any] | None, str]:
    """The newest error-log record from the Redis Stream, else the newest failure event."""
    if server is not None:
        key = guard.settings.key_prefix + "errors"
        client = new_redis_client(server.url, timeout=5.0)
        entries: Any = []
        try:
            entries = client.xrevrange(key, count=50)
        except redis.RedisError:
            pass
        finally:
            client.close()
        records = [json.loads(fields[b"record"]) for _id, fields in entries or ()]
        for record in records:
            if record.get("kwargs"):  # one that shows a redacted keyword argument
                return record, f"Redis Stream {key}"
        if records:
            return records[0], f"Redis Stream {key}"
    if newest.event is not None:
        return newest.event.as_record(), "as the sinks received it; no Redis, so no stream"
    return None, "none"
