"""The Celery app of the docker-compose stack: a small shop whose tasks fail in every way
telemetry_guard reports.

Workers run it with ``celery -A stack_app worker``; ``producer.py`` sends it work. Every
setting comes from the ``TELEMETRY_GUARD_*`` environment of docker-compose.yml.

- ``shop.send_receipt`` succeeds;
- ``shop.charge_card`` loses its connection now and then and succeeds on a retry;
- ``shop.import_feed`` gets an invalid row now and then: a low give-up, never retried;
- ``shop.reconcile_ledger`` fails rarely, classified critical: Sentry (when a DSN is set)
  and an e-mail through the notification worker to the SMTP catcher;
- ``shop.authorize_payment`` calls a payment gateway that is down 12 minutes in every 30
  (``STACK_OUTAGE_SECONDS`` of every ``STACK_OUTAGE_CYCLE_SECONDS``), behind the circuit
  breaker ``payment-gateway``; while it is open, payments are queued for later by the
  task's fallback. An outage longer than 10 minutes fires ``TelemetryGuardBreakerOpen``;
- ``shop.refresh_rates`` runs every minute from beat (the ``beat`` service, which serves
  its own ``/metrics``): stop beat (``docker compose stop beat``) and
  ``TelemetryGuardBeatDown`` fires; stop the worker instead and
  ``TelemetryGuardPeriodicTaskMissed`` does.
"""

from __future__ import annotations

import os
import random
import time

from celery import Celery

from telemetry_guard import (
    CircuitBreaker,
    GuardedTask,
    RetryPolicy,
    TelemetryGuard,
    configure_logging,
)

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://redis:6379/0")
QUEUE = "shop"
#: The payment gateway is down for this many seconds at the start of every cycle.
OUTAGE_SECONDS = float(os.environ.get("STACK_OUTAGE_SECONDS", "720"))
OUTAGE_CYCLE_SECONDS = float(os.environ.get("STACK_OUTAGE_CYCLE_SECONDS", "1800"))

app = Celery("stack", broker=BROKER, backend=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    beat_schedule={
        "refresh exchange rates": {"task": "shop.refresh_rates", "schedule": 60.0},
    },
)
configure_logging()
guard = TelemetryGuard(app)

#: State shared in the stack's Redis by every worker process.
payment_gateway = CircuitBreaker("payment-gateway", failure_threshold=5, reset_timeout=30.0)


def gateway_down(now: float | None = None) -> bool:
    """Whether the simulated payment gateway is in its outage (the same for every worker)."""
    return (time.time() if now is None else now) % OUTAGE_CYCLE_SECONDS < OUTAGE_SECONDS


@app.task(bind=True, base=GuardedTask, name="shop.send_receipt")
def send_receipt(self: GuardedTask, order_id: int) -> str:
    """Always succeeds after a little work."""
    time.sleep(random.uniform(0.01, 0.2))
    return f"receipt {order_id} sent"


@app.task(bind=True, base=GuardedTask, name="shop.charge_card",
          retry_policy=RetryPolicy(max_retries=4, base_delay=0.5, max_delay=5.0))
def charge_card(self: GuardedTask, order_id: int, api_key: str = "") -> str:
    """A flaky card processor: a third of the attempts lose the connection."""
    time.sleep(random.uniform(0.05, 0.3))
    if random.random() < 0.33:
        raise ConnectionError(f"card processor reset the connection (order {order_id})")
    return "charged"


@app.task(bind=True, base=GuardedTask, name="shop.import_feed")
def import_feed(self: GuardedTask, row: dict[str, object]) -> str:
    """One row in five fails validation: not retryable, given up at once."""
    if random.random() < 0.2:
        raise ValueError("feed row failed validation")
    return "imported"


@app.task(bind=True, base=GuardedTask, name="shop.reconcile_ledger", severity="critical")
def reconcile_ledger(self: GuardedTask) -> str:
    """Now and then the ledger does not balance: a critical failure, mailed."""
    if random.random() < 0.1:
        raise RuntimeError("ledger totals do not balance")
    return "balanced"


def queue_payment_for_later(order_id: int) -> str:
    """The fallback while the gateway's breaker is open (or retries ran out)."""
    return f"payment {order_id} queued for later"


@app.task(bind=True, base=GuardedTask, name="shop.authorize_payment", breaker=payment_gateway,
          fallback=queue_payment_for_later,
          retry_policy=RetryPolicy(max_retries=2, base_delay=1.0, max_delay=4.0))
def authorize_payment(self: GuardedTask, order_id: int) -> str:
    """Calls the payment gateway, which times out during its outage."""
    time.sleep(random.uniform(0.02, 0.1))
    if gateway_down():
        raise TimeoutError("payment gateway did not answer")
    return "authorized"


@app.task(bind=True, base=GuardedTask, name="shop.refresh_rates")
def refresh_rates(self: GuardedTask) -> str:
    """A periodic task: beat sends it every minute."""
    time.sleep(random.uniform(0.05, 0.2))
    return "rates refreshed"
