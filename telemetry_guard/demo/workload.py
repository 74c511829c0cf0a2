"""The demo's Celery app, its tasks and the schedule that drives them.

Five kinds of work, each showing one part of telemetry_guard:

- ``demo.checkout`` always succeeds;
- ``demo.charge_card`` raises ``ConnectionError`` a few times, then succeeds after
  retries (now and then more often than its policy allows: a give-up, escalated to high);
- ``demo.import_row`` raises ``ValueError``: not retryable, given up at once (low);
- ``telemetry_guard.resilient_request`` calls the local inventory service, which goes
  down (503) for a while: its host breaker opens, half-opens and closes again;
- ``demo.reconcile_ledger`` fails CRITICAL: routed to e-mail through the notification queue.

Every task of the demo's own gets a fake ``password`` or ``api_key`` keyword argument,
so the error log can show that they never leave the worker unredacted.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.signals import after_task_publish, task_postrun, task_success

from ..core.policy import RetryPolicy
from ..http import TransientHTTPError, register_resilient_request
from ..integration.guard import TelemetryGuard
from ..integration.task import GuardedTask
from ..notify import NOTIFY_TASK_NAME
from .services import DownstreamService

DEFAULT_QUEUE = "demo"
#: Fake secrets the demo's tasks carry; the error log must show them as ``[REDACTED]``.
FAKE_PASSWORD = "hunter2-demo-password"
FAKE_API_KEY = "demo-api-key-7f3a9c"
#: Quick retries, so that a short demo shows them completing.
CARD_POLICY = RetryPolicy(max_retries=3, base_delay=0.2, max_delay=1.0,
                          retry_on=(ConnectionError, TimeoutError))
HTTP_POLICY = RetryPolicy(max_retries=2, base_delay=0.2, max_delay=0.8,
                          retry_on=(TransientHTTPError, ConnectionError, TimeoutError))
#: Consecutive failures that open the inventory service's breaker.
BREAKER_THRESHOLD = 3


def build_app(broker: str, backend: str) -> Celery:
    """A Celery app for the demo: quiet, quick to poll, one default queue."""
    app = Celery("telemetry_guard_demo", broker=broker, backend=backend, set_as_current=False)
    options: dict[str, Any] = {"queue_order_strategy": "priority"}
    if broker.startswith("memory://"):
        options["polling_interval"] = 0.05
    app.conf.update(
        broker_connection_retry_on_startup=True,
        broker_transport_options=options,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_prefetch_multiplier=1,
        task_default_queue=DEFAULT_QUEUE,
        # Nobody waits for results: never subscribe to them (resilient_request still
        # stores its PROGRESS state in the backend).
        task_ignore_result=True,
        result_expires=300,
    )
    return app


@dataclass(frozen=True)
class Schedule:
    """When things happen in a demo of ``duration`` seconds (offsets from its start)."""

    duration: float
    outage_start: float
    outage_end: float
    breaker_reset: float
    critical_at: tuple[float, ...]

    @classmethod
    def for_duration(cls, duration: float) -> Schedule:
        """Outage over 20–45 % of the run; a CRITICAL failure early and twice more later."""
        reset = min(5.0, max(1.0, 0.1 * duration))
        return cls(duration=duration, outage_start=0.2 * duration, outage_end=0.45 * duration,
                   breaker_reset=reset,
                   critical_at=(max(0.5, 0.1 * duration), 0.55 * duration, 0.8 * duration))

    def downstream_down(self, elapsed: float) -> bool:
        return self.outage_start <= elapsed < self.outage_end


@dataclass
class Tally:
    """The demo's own count: tasks sent and succeeded, messages published and run.

    ``pending`` (published minus run, retries and notifications included) reaches 0 when
    the worker has nothing left to do: no queued message, no retry waiting for its ETA.
    """

    sent: int = 0
    succeeded: int = 0
    fallbacks: int = 0
    published: int = 0
    executed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def pending(self) -> int:
        return self.published - self.executed

    def on_published(self, **_: Any) -> None:
        """``after_task_publish`` (any thread): one more message to run."""
        with self._lock:
            self.published += 1

    def on_postrun(self, **_: Any) -> None:
        """``task_postrun`` (worker thread): a message ran (succeeded, failed or retried)."""
        with self._lock:
            self.executed += 1

    def on_success(self, sender: Any = None, result: Any = None, **_: Any) -> None:
        """``task_success`` (worker thread); the notification task is not counted."""
        if getattr(sender, "name", "") == NOTIFY_TASK_NAME:
            return
        with self._lock:
            self.succeeded += 1
            if isinstance(result, dict) and result.get("status") == "fallback":
                self.fallbacks += 1

    def _pairs(self) -> list[tuple[Any, Any]]:
        return [(after_task_publish, self.on_published), (task_postrun, self.on_postrun),
                (task_success, self.on_success)]

    def connect(self) -> None:
        for signal, handler in self._pairs():
            signal.connect(handler, weak=False, dispatch_uid=f"demo:{id(self)}")

    def disconnect(self) -> None:
        for signal, handler in self._pairs():
            signal.disconnect(handler, dispatch_uid=f"demo:{id(self)}")


class Workload:
    """The demo's tasks on ``app``, and the producer that sends them on a schedule."""

    def __init__(self, app: Celery, guard: TelemetryGuard, downstream: DownstreamService,
                 schedule: Schedule, *, seed: int = 7, breaker_storage: str = "redis") -> None:
        self.app = app
        self.guard = guard
        self.downstream = downstream
        self.schedule = schedule
        self.tally = Tally()
        self.rng = random.Random(seed)
        self._critical_sent = 0
        self._next_at = 0.0
        self._define_tasks()
        # The built-in HTTP task, re-optioned for a short demo: quick retries, and a
        # breaker per host that opens after a few failures and tries again soon.
        self.http = register_resilient_request(
            app, retry_policy=HTTP_POLICY, cache_ttl=300.0,
            breaker_defaults={"storage": breaker_storage, "failure_threshold": BREAKER_THRESHOLD,
                              "reset_timeout": schedule.breaker_reset})

    def _define_tasks(self) -> None:
        app = self.app

        @app.task(bind=True, base=GuardedTask, name="demo.checkout", shared=False)
        def checkout(self: Any, order_id: int) -> dict[str, Any]:
            return {"order": order_id, "status": "confirmed"}

        @app.task(bind=True, base=GuardedTask, name="demo.charge_card", shared=False,
                  retry_policy=CARD_POLICY)
        def charge_card(self: Any, order_id: int, fail_times: int,
                        api_key: str = "") -> dict[str, Any]:
            if (self.request.retries or 0) < fail_times:
                raise ConnectionError(f"payment gateway reset the connection (order {order_id})")
            return {"order": order_id, "charged": True}

        @app.task(bind=True, base=GuardedTask, name="demo.import_row", shared=False)
        def import_row(self: Any, row: dict[str, Any], password: str = "") -> None:
            raise ValueError(f"row {row.get('line')}: quantity must be a positive integer")

        @app.task(bind=True, base=GuardedTask, name="demo.reconcile_ledger", shared=False,
                  severity="critical")
        def reconcile_ledger(self: Any, day: str, api_key: str = "") -> None:
            raise RuntimeError(f"ledger for {day} does not balance: off by 1,250.00 EUR")

        @app.task(name="demo.wake", shared=False, ignore_result=True)
        def wake() -> None:
            """Does nothing: its arrival ends the worker's wait for messages."""

        self.wake = wake
        self.checkout = checkout
        self.charge_card = charge_card
        self.import_row = import_row
        self.reconcile_ledger = reconcile_ledger

    def stop_worker_soon(self) -> None:
        """Ask the in-process worker to stop, and wake it so that it does at once.

        Celery's solo worker checks for shutdown only between two waits for messages
        (of up to 2 s each, on the memory transport): two no-op messages end both.
        """
        from celery.worker import state

        state.should_terminate = 0
        for _ in range(2):
            self.wake.apply_async(queue=DEFAULT_QUEUE)

    # -- the producer (main thread) ----------------------------------------------------
    def step(self, elapsed: float) -> None:
        """Send what is due at ``elapsed`` seconds; call it often (every ~50 ms)."""
        down = self.schedule.downstream_down(elapsed)
        if self.downstream.down != down:
            self.downstream.down = down
        critical = self.schedule.critical_at
        while self._critical_sent < len(critical) and elapsed >= critical[self._critical_sent]:
            self._send(self.reconcile_ledger, f"2024-06-{self._critical_sent + 1:02d}",
                       api_key=FAKE_API_KEY)
            self._critical_sent += 1
        # About 16 messages a second: mostly healthy, some flaky, a few bad rows, and a
        # steady stream of inventory look-ups through the breaker.
        while elapsed >= self._next_at:
            self._next_at += 0.0625
            self._send_one()

    def _send_one(self) -> None:
        roll = self.rng.random()
        n = self.tally.sent
        if roll < 0.45:
            self._send(self.checkout, n)
        elif roll < 0.60:
            fail_times = self.rng.choice((1, 1, 2, 2, 3, 5))
            self._send(self.charge_card, n, fail_times, api_key=FAKE_API_KEY)
        elif roll < 0.66:
            self._send(self.import_row, {"line": n, "sku": "A-17", "qty": -2},
                       password=FAKE_PASSWORD)
        else:
            sku = f"SKU-{self.rng.randrange(1, 6)}"
            self._send(self.http, "GET", self.downstream.url(f"/inventory/{sku}"),
                       timeout=2.0)

    def _send(self, task: Any, *args: Any, **kwargs: Any) -> None:
        task.apply_async(args=args, kwargs=kwargs, queue=DEFAULT_QUEUE)
        self.tally.sent += 1
