"""``check``: a doctor for the set-up, one line per finding: ``ok``, ``warn`` or ``fail``.

It checks, from the host it runs on (run it where the workers run, with their
environment): the broker, the telemetry Redis and its version, the prometheus
multiprocess directory (prefork pool), the SMTP server (EHLO, STARTTLS and login when
configured; no mail is sent), the Sentry DSN, that a worker consumes the notification
queue (when e-mail is configured), and the clock skew between workers.

Clock skew: ``inspect().clock()`` is Celery's logical (Lamport) clock and says nothing
about wall time, and neither ``stats()`` nor ``ping`` replies carry a timestamp. Worker
heartbeat events do: each carries the worker's ``time.time()`` when it was sent. The
check asks every worker for a heartbeat now (the ``heartbeat`` broadcast that
``celery events`` also uses) and compares each one's timestamp with this host's clock on
arrival. The difference is the worker's offset plus the delivery time (milliseconds on
a healthy broker), so offsets of different workers compare soundly with each other; the
spread between the fastest and the slowest clock is the skew. It matters because a retry
countdown becomes an absolute ETA on the clock of the worker that schedules it and is
honoured on the clock of the worker that receives it. Workers started with both
``--without-heartbeat`` and ``--without-gossip`` (and no ``-E``) send no heartbeats; the
check then says it could not measure.

Exit status 1 when any check fails; warnings alone exit 0. Passwords from the settings
never appear: URLs are shown with their user information masked, and every line is
scrubbed of the secrets it could contain.
"""

from __future__ import annotations

import functools
import os
import smtplib
import ssl
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import click

from ..stores.redis_client import mask_url, new_redis_client
from .context import EXIT_PROBLEMS, cli_context, describe, json_option, settings_of
from .output import printable

OK, WARN, FAIL = "ok", "warn", "fail"
#: Seconds any one network probe may take.
PROBE_TIMEOUT = 3.0
#: Seconds workers get to answer ``inspect`` and heartbeat requests.
WORKER_TIMEOUT = 1.0
#: Seconds to wait for every worker's heartbeat.
HEARTBEAT_WINDOW = 2.5
#: Clock skew above which the check warns, in seconds.
MAX_SKEW = 2.0
#: Oldest Redis the error log (streams) and breakers (scripts reading TIME) work on.
MIN_REDIS = (5, 0)
PREFORK_POOLS = ("prefork", "processes")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class Finding:
    """One line of the report."""

    status: str
    check: str
    detail: str
    fix: str | None = None

    def row(self) -> dict[str, Any]:
        return {"status": self.status, "check": self.check, "detail": self.detail,
                "fix": self.fix}


@dataclass
class Workers:
    """What the workers told us: queues consumed by each, or why we could not ask."""

    queues: dict[str, list[str]]
    unavailable: str | None = None


class Doctor:
    """Runs each check once; one that raises becomes a ``fail`` line, never a traceback."""

    def __init__(self, app: Any, settings: Any, *, pool: str | None = None) -> None:
        self.app = app
        self.settings = settings
        self.pool = pool
        self.broker_ok = False
        self._workers: Workers | None = None

    def run(self) -> list[Finding]:
        findings: list[Finding] = []
        for check in (self.broker, self.redis, self.metrics_dir, self.smtp, self.sentry,
                      self.notification_consumers, self.clock_skew):
            name = check.__name__.replace("_", " ")
            try:
                findings.append(check())
            except Exception as exc:  # a probe we did not foresee failing
                findings.append(Finding(FAIL, name, f"check crashed: {describe(exc)}",
                                        "report this as a telemetry_guard bug"))
        return findings

    # -- broker and Redis --------------------------------------------------------------

    def broker(self) -> Finding:
        conn = self.app.connection_for_write(connect_timeout=PROBE_TIMEOUT)
        raw = self.app.conf.broker_write_url or self.app.conf.broker_url
        if isinstance(raw, (list, tuple)):
            raw = ";".join(str(u) for u in raw)
        shown = (";".join(str(mask_url(u.strip())) for u in raw.split(";"))
                 if isinstance(raw, str) else mask_url(conn.as_uri()))
        try:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2,
                                   interval_max=0.2, timeout=PROBE_TIMEOUT)
        except Exception as exc:
            return Finding(FAIL, "broker", f"{shown} unreachable: {describe(exc)}",
                           "start the broker, or fix broker_url (CELERY_BROKER_URL)")
        finally:
            conn.release()
        self.broker_ok = True
        return Finding(OK, "broker", f"{shown} reachable")

    def redis(self) -> Finding:
        url = self.settings.redis_url
        if not url:
            return Finding(WARN, "redis", "no Redis configured: no error log, no dead letters, "
                           "breakers and throttles kept per process",
                           "set telemetry_guard_redis_url (TELEMETRY_GUARD_REDIS_URL)")
        shown = mask_url(url)
        client = new_redis_client(url, timeout=PROBE_TIMEOUT)
        try:
            info = client.info("server")
        except Exception as exc:
            return Finding(FAIL, "redis", f"{shown} unreachable: {describe(exc)}",
                           "start Redis there, or point telemetry_guard_redis_url "
                           "(TELEMETRY_GUARD_REDIS_URL) at a running one")
        finally:
            client.close()
        version = str(info.get("redis_version", "?"))
        if _version(version) < MIN_REDIS:
            return Finding(FAIL, "redis", f"{shown} is Redis {version}; the error log and "
                           f"breakers need {'.'.join(map(str, MIN_REDIS))} or later",
                           "upgrade Redis")
        return Finding(OK, "redis", f"{shown} reachable, Redis {version}")

    # -- metrics -----------------------------------------------------------------------

    def metrics_dir(self) -> Finding:
        pool = str(self.pool or self.app.conf.worker_pool or "prefork")
        prefork = pool.rsplit(":", 1)[-1].rsplit(".", 1)[-1].lower() in PREFORK_POOLS \
            or "prefork" in pool.lower()
        path = os.environ.get(MULTIPROC_ENV)
        if not prefork:
            return Finding(OK, "metrics dir", f"pool {pool}: {MULTIPROC_ENV} not needed")
        if not path:
            port = self.settings.metrics_port
            if port is None:
                return Finding(WARN, "metrics dir", f"pool prefork and {MULTIPROC_ENV} unset "
                               "(metrics endpoint off): pool children's counts are lost to "
                               "any exporter", f"export {MULTIPROC_ENV}=/some/empty/dir for "
                               "the worker, or run the worker with another pool")
            return Finding(FAIL, "metrics dir", f"pool prefork, /metrics on port {port}, "
                           f"{MULTIPROC_ENV} unset: /metrics shows only the main process, "
                           "not the children that run tasks",
                           f"export {MULTIPROC_ENV}=/some/empty/dir for the worker")
        if not os.path.isdir(path):
            return Finding(FAIL, "metrics dir", f"{MULTIPROC_ENV}={path} is not a directory",
                           f"create it (mkdir -p {path}) or point {MULTIPROC_ENV} elsewhere")
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            return Finding(FAIL, "metrics dir", f"{MULTIPROC_ENV}={path} is not writable: "
                           f"{describe(exc)}", "make it writable by the worker's user")
        return Finding(OK, "metrics dir", f"{MULTIPROC_ENV}={path} writable (pool prefork)")

    # -- notification channels ---------------------------------------------------------

    def smtp(self) -> Finding:
        if not self.settings.email:
            return Finding(OK, "smtp", "e-mail not configured")
        from ..notify import EmailConfig

        try:
            config = EmailConfig.from_settings(self.settings.email)
        except ValueError as exc:
            return Finding(FAIL, "smtp", str(exc), "fix telemetry_guard_email "
                           "(TELEMETRY_GUARD_EMAIL)")
        where = f"{config.host}:{config.port}"
        timeout = min(config.timeout, PROBE_TIMEOUT)
        done: list[str] = []
        step = "TLS connect" if config.ssl else "connect"
        try:
            smtp: smtplib.SMTP
            if config.ssl:
                smtp = smtplib.SMTP_SSL(config.host, config.port, timeout=timeout,
                                        context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(config.host, config.port, timeout=timeout)
            with smtp:
                done.append(step)
                step = "EHLO"
                code, reply = smtp.ehlo()
                if code != 250:
                    raise smtplib.SMTPResponseException(code, reply)
                done.append(step)
                if config.starttls:
                    step = "STARTTLS"
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                    done.append(step)
                if config.user:
                    step = f"login as {config.user}"
                    smtp.login(config.user, config.password or "")
                    done.append(step)
        except Exception as exc:
            return Finding(FAIL, "smtp", f"{where}: {step} failed: {describe(exc)}",
                           "check host, port, ssl/starttls, user and password in "
                           "telemetry_guard_email, and that the server is up")
        return Finding(OK, "smtp", f"{where}: {', '.join(done)} ok (no mail sent)")

    def sentry(self) -> Finding:
        dsn = self.settings.sentry_dsn
        if not dsn:
            return Finding(OK, "sentry", "no DSN set: Sentry off unless the app initialises "
                           "sentry-sdk itself")
        from sentry_sdk.utils import Dsn

        try:
            parsed = Dsn(dsn)
        except Exception as exc:
            return Finding(FAIL, "sentry", f"DSN does not parse: {describe(exc)}",
                           "copy the DSN from Sentry's project settings (Client Keys) into "
                           "telemetry_guard_sentry_dsn (TELEMETRY_GUARD_SENTRY_DSN)")
        return Finding(OK, "sentry", f"DSN parses: {parsed.scheme}://***@{parsed.host}"
                       f"/{parsed.project_id}")

    # -- workers -----------------------------------------------------------------------

    def workers(self) -> Workers:
        """Each worker's consumed queues (asked once), or why we could not ask."""
        if self._workers is None:
            if not self.broker_ok:
                self._workers = Workers({}, "not checked: the broker is unreachable")
            else:
                replies = self.app.control.inspect(timeout=WORKER_TIMEOUT).active_queues()
                self._workers = Workers({
                    name: sorted(q.get("name", "") for q in queues or ())
                    for name, queues in (replies or {}).items()})
        return self._workers

    def notification_consumers(self) -> Finding:
        queue = self.settings.notification_queue
        subject = "notification queue"
        if not self.settings.email:
            return Finding(OK, subject, f"e-mail not configured: {queue} not needed")
        workers = self.workers()
        fix = (f"start a worker that consumes it: celery -A <app> worker -Q {queue},<your "
               "queues> (or a dedicated one with -Q " + queue + ")")
        if workers.unavailable:
            return Finding(WARN, subject, workers.unavailable, "fix the broker first")
        if not workers.queues:
            return Finding(FAIL, subject, f"no worker answered within {WORKER_TIMEOUT:g} s: "
                           f"nobody consumes {queue}, e-mails would wait in the queue", fix)
        consumers = sorted(name for name, queues in workers.queues.items() if queue in queues)
        if not consumers:
            return Finding(FAIL, subject, f"{len(workers.queues)} worker(s) answered, none "
                           f"consumes {queue}: e-mails would wait in the queue", fix)
        return Finding(OK, subject, f"{queue} consumed by {', '.join(consumers)}")

    def clock_skew(self) -> Finding:
        workers = self.workers()
        subject = "clock skew"
        if workers.unavailable:
            return Finding(WARN, subject, workers.unavailable, "fix the broker first")
        if not workers.queues:
            return Finding(WARN, subject, "no worker answered: nothing to compare",
                           "start the workers, then check again")
        offsets = heartbeat_offsets(self.app, set(workers.queues), HEARTBEAT_WINDOW)
        missing = sorted(set(workers.queues) - set(offsets))
        if not offsets:
            return Finding(WARN, subject, "no worker sent a heartbeat: cannot measure",
                           "run workers without --without-heartbeat/--without-gossip "
                           "(or with -E), then check again")
        spread = max(offsets.values()) - min(offsets.values())
        worst = max(offsets, key=lambda name: abs(offsets[name]))
        detail = (f"{len(offsets)} worker(s), spread {spread:.3f} s; largest offset from this "
                  f"host {offsets[worst]:+.3f} s ({worst})")
        if missing:
            detail += f"; no heartbeat from {', '.join(missing)}"
        fix = ("synchronise the clocks with NTP (chrony, systemd-timesyncd): retry countdowns "
               "are absolute ETAs, set on one worker's clock and honoured on another's")
        if spread > MAX_SKEW:
            return Finding(WARN, subject, f"workers disagree by more than {MAX_SKEW:g} s: "
                           + detail, fix)
        if abs(offsets[worst]) > MAX_SKEW:
            return Finding(WARN, subject, f"a worker is more than {MAX_SKEW:g} s off this "
                           "host's clock: " + detail, fix)
        if missing:
            return Finding(WARN, subject, detail, "check those workers' heartbeat settings")
        return Finding(OK, subject, detail)


def heartbeat_offsets(app: Any, expected: set[str], window: float) -> dict[str, float]:
    """Each worker's clock minus this host's, from heartbeats requested now (seconds)."""
    offsets: dict[str, float] = {}

    def on_heartbeat(event: dict[str, Any]) -> None:
        hostname, sent = event.get("hostname"), event.get("timestamp")
        if isinstance(hostname, str) and isinstance(sent, (int, float)):
            offsets.setdefault(hostname, float(sent) - float(event["local_received"]))

    deadline = time.monotonic() + window
    with app.connection_for_read(connect_timeout=PROBE_TIMEOUT) as conn:
        receiver = app.events.Receiver(conn, handlers={"worker-heartbeat": on_heartbeat})
        # the raw timestamp: Celery's "localize" shifts it by the sender's UTC offset
        receiver.event_from_message = functools.partial(
            type(receiver).event_from_message, receiver, localize=False)

        def stop_when_done() -> None:
            if time.monotonic() >= deadline or expected <= set(offsets):
                receiver.should_stop = True

        receiver.on_iteration = stop_when_done
        try:
            for _ in receiver.consume(limit=None, timeout=window, safety_interval=0.2,
                                      wakeup=True):
                stop_when_done()
        except TimeoutError:
            pass
    return offsets


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def secrets_of(app: Any, settings: Any) -> list[str]:
    """Every password the settings hold, as they could appear in a line of output."""
    found: list[str] = []
    email = settings.email or {}
    if email.get("password"):
        found.append(str(email["password"]))
    urls = [settings.redis_url, settings.sentry_dsn]
    broker = app.conf.broker_url
    urls.extend(broker if isinstance(broker, (list, tuple)) else [broker])
    for url in urls:
        if not isinstance(url, str):
            continue
        for part in url.split(";"):
            try:
                split = urlsplit(part.strip())
                userinfo = [split.password, split.username if split.password is None else None]
            except ValueError:
                continue
            found.extend(p for p in userinfo if p)
            found.extend(parse_qs(split.query).get("password", []))
    variants = {v for s in found for v in (s, unquote(s))}
    return sorted((s for s in variants if len(s) >= 3), key=len, reverse=True)


def scrub(text: str | None, secrets: Iterable[str]) -> str | None:
    """``text`` with every secret replaced by ``***``."""
    if text is None:
        return None
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


@click.command()
@click.option("--pool", metavar="POOL",
              help="The worker's pool (-P) when not app.conf.worker_pool (default prefork).")
@json_option
@click.pass_context
def check(ctx: click.Context, pool: str | None) -> None:
    """Check the set-up: broker, Redis, metrics dir, SMTP, Sentry, notification consumers, clocks.

    One line per check: ok, warn or fail, and for warn/fail the fix. Exit status 1 when
    a check fails. Run it where the workers run, with their environment.
    """
    obj = cli_context(ctx)
    app = obj.get_app()
    try:
        settings = settings_of(app)
    except (TypeError, ValueError) as exc:
        findings = [Finding(FAIL, "settings", describe(exc),
                            "fix the telemetry_guard_* setting it names")]
        secrets: list[str] = []
    else:
        findings = Doctor(app, settings, pool=pool).run()
        secrets = secrets_of(app, settings)
    report(findings, secrets, as_json=obj.as_json)
    if any(f.status == FAIL for f in findings):
        ctx.exit(EXIT_PROBLEMS)


def report(findings: list[Finding], secrets: list[str], *, as_json: bool,
           echo: Callable[[str], None] = click.echo) -> None:
    """Print the findings: JSON lines, or aligned lines with the fix under each problem."""
    rows = [{k: scrub(v, secrets) for k, v in f.row().items()} for f in findings]
    if as_json:
        import json

        for row in rows:
            echo(json.dumps(row, sort_keys=True))
        return
    width = max((len(r["check"] or "") for r in rows), default=0)
    for row in rows:
        echo(printable(f"{row['status']:<5} {row['check']:<{width}}  {row['detail']}"))
        if row["fix"] and row["status"] != OK:
            echo(printable(f"{'':<5} {'':<{width}}  fix: {row['fix']}"))
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in (OK, WARN, FAIL)}
    echo(f"{len(rows)} checks: {counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} fail")


__all__ = ["Doctor", "Finding", "check", "heartbeat_offsets"]
