"""``python -m telemetry_guard.demo``: run a real worker through healthy, flaky and failing tasks.

Uses a private ``redis-server`` on a free port when the binary exists (so the
error log and dead letters are real Redis Streams), otherwise Celery's
in-memory transport. JSON log lines go to a file; ``/metrics`` is served.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from prometheus_client import REGISTRY

from telemetry_guard import GuardedTask, RetryPolicy, TelemetryGuard, configure_logging
from telemetry_guard.exposition import serve_metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str] | None:
    if shutil.which("redis-server") is None:
        return None
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(200):
        try:
            client.ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    return None


def _total(name: str, **match: str) -> float:
    total = 0.0
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in match.items()):
                total += s.value
    return total


@click.command()
@click.option("--duration", default=10.0, show_default=True, help="Seconds of workload.")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Where JSON log lines go (default: a temporary file).")
def main(duration: float, log_file: str | None) -> None:
    """Run a live workload through GuardedTask and show what telemetry_guard recorded."""
    workdir = tempfile.mkdtemp(prefix="telemetry-guard-demo-")
    log_path = Path(log_file or Path(workdir) / "events.jsonl")
    configure_logging(stream=log_path.open("a", buffering=1))
    server = _start_redis(workdir)
    broker = server[1] if server else "memory://"
    app = Celery("demo", broker=broker, backend=broker if server else "cache+memory://")
    app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
    guard = TelemetryGuard(app)
    metrics = serve_metrics(0, "127.0.0.1")

    @app.task(bind=True, base=GuardedTask, name="demo.healthy")
    def healthy(self: Any, n: int) -> int:
        return n * 2

    @app.task(bind=True, base=GuardedTask, name="demo.flaky",
              retry_policy=RetryPolicy(max_retries=4, base_delay=0.2, max_delay=1.0))
    def flaky(self: Any, order_id: int, password: str = "") -> str:
        if self.request.retries < 2:
            raise ConnectionError(f"payment gateway reset (order {order_id})")
        return "charged"

    @app.task(bind=True, base=GuardedTask, name="demo.invalid")
    def invalid(self: Any, payload: dict[str, Any]) -> None:
        raise ValueError("payload failed validation")

    @app.task(bind=True, base=GuardedTask, name="demo.ledger", severity="critical")
    def ledger(self: Any) -> None:
        raise RuntimeError("ledger totals do not balance")

    click.echo(f"broker: {broker}")
    click.echo(f"metrics: http://127.0.0.1:{metrics.server_port}/metrics")
    click.echo(f"JSON logs: {log_path}")
    rng = random.Random(7)
    sent = 0
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, loglevel="CRITICAL"):
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                roll = rng.random()
                if roll < 0.7:
                    healthy.delay(sent)
                elif roll < 0.85:
                    flaky.delay(sent, password="s3cret-demo")
                elif roll < 0.97:
                    invalid.delay({"sku": "A-1", "api_key": "ak-demo"})
                else:
                    ledger.delay()
                sent += 1
                time.sleep(0.05)
                if sent % 40 == 0:
                    _show(sent)
            time.sleep(2.0)
            guard.flush()
        _show(sent)
        if server:
            records = redis.Redis.from_url(broker).xrevrange("telemetry_guard:errors", count=1)
            if records:
                click.echo("\nnewest error-log record (redacted):")
                record = json.loads(records[0][1][b"record"])
                record["traceback"] = record["traceback"].splitlines()[-1]
                click.echo(json.dumps(record, indent=2)[:1500])
        events = [json.loads(line)["event"] for line in log_path.read_text().splitlines()]
        click.echo(f"\n{len(events)} log events in {log_path}, e.g. "
                   + ", ".join(sorted(set(events))))
    finally:
        guard.close()
        metrics.shutdown()
        if server:
            server[0].terminate()
            server[0].wait()


def _show(sent: int) -> None:
    click.echo(
        f"sent={sent:5d}  failures={_total('telemetry_guard_task_failures_total'):4.0f}"
        f"  retries={_total('telemetry_guard_task_retries_total'):4.0f}"
        f"  give-ups={_total('telemetry_guard_task_giveups_total'):4.0f}"
        f"  critical={_total('telemetry_guard_task_failures_total', severity='critical'):3.0f}")


if __name__ == "__main__":
    main()
