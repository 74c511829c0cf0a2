"""Secrets: canaries in task arguments and exception messages never leave redacted.

Real ``GuardedTask`` failures run through an in-process worker with every sink on: structlog
rendered as JSON (``configure_logging(stream)``), spans (in-memory exporter), Prometheus,
the error log and dead letters (a private, password-protected redis-server), Sentry (a
private endpoint, tests/sentry_server.py) and e-mail (a private SMTP server with a login,
tests/smtp_server.py). The canaries: kwargs ``password``, ``token``, an ``Authorization``
header ``Bearer …``, a URL with userinfo ``redis://u:…@h`` (positional and in kwargs), and an
``sk_live_…`` key, a bearer token, a URL password and ``password=…`` inside the exception
message. Then everything captured is searched. The ``replay`` field of a dead letter keeps
the original arguments on purpose: it must be the one place they are found.

The Redis and SMTP passwords of the settings never appear in the logs, nor in the output of
``telemetry-guard check`` (table and JSON, servers reachable or refusing the password).
"""

from __future__ import annotations

import collections
import io
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celery.app.trace as celery_trace
import celery.worker.consumer.consumer as celery_consumer
import pytest
import redis
import sentry_sdk
import structlog
from celery import Celery
from celery.contrib.testing.worker import start_worker
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from telemetry_guard import GuardedTask, RetryPolicy, TelemetryGuard, configure_logging
from tests.integration.test_cli_breakers import cli_env, run_cli
from tests.sentry_server import SentryServer
from tests.servers import free_port, wait_for
from tests.smtp_server import CapturingSMTPServer

PASSWORD = "pw-canary-7f3a9e"
TOKEN = "tok-canary-51c2e0"
BEARER = "canaryBearer0d4e77"
URL_PASSWORD = "urlcanary88e1f2"
SK_KEY = "sk_live_canary9b7c51ab"
#: Every canary of the task arguments and messages; none may appear outside replay data.
CANARIES = (PASSWORD, TOKEN, BEARER, URL_PASSWORD, SK_KEY)
REDIS_PASSWORD = "redis-canary-4c1d9a"
SMTP_PASSWORD = "smtp-canary-a27f03"
SMTP_USER = "guard"
SECRET_URL = f"redis://u:{URL_PASSWORD}@cache.internal:6379/0"
SECRET_KWARGS = {
    "password": PASSWORD,
    "token": TOKEN,
    "headers": {"Authorization": f"Bearer {BEARER}", "Accept": "application/json"},
    "dsn": SECRET_URL,
    "note": "ordinary",
}
MESSAGE = (f"charge failed: {SECRET_URL} refused key {SK_KEY} "
           f"(Authorization: Bearer {BEARER}; password={PASSWORD})")
NOTIFICATIONS = "telemetry_guard.notifications"


# -- a private redis-server with a password ----------------------------------------------
class PasswordRedis:
    """``redis-server --requirepass`` on a free port, owned by this module."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="tg-redis-auth-")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir, "--requirepass", REDIS_PASSWORD],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._ready, timeout=10)

    def _ready(self) -> bool:
        assert self.process.poll() is None, "redis-server exited"
        try:
            return bool(self.client(0).ping())
        except redis.ConnectionError:
            return False

    def url(self, db: int, password: str = REDIS_PASSWORD) -> str:
        return f"redis://:{password}@127.0.0.1:{self.port}/{db}"

    def client(self, db: int) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), socket_connect_timeout=0.5)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def password_redis() -> Iterator[PasswordRedis]:
    server = PasswordRedis()
    yield server
    server.stop()


# -- sentry-sdk, structlog: process-global state restored around each test -----------------
def reset_sentry() -> None:
    sentry_sdk.get_client().close(timeout=2.0)
    sentry_sdk.get_global_scope().set_client(None)


@pytest.fixture
def sentry(monkeypatch: pytest.MonkeyPatch) -> Iterator[SentryServer]:
    """A private Sentry endpoint; sentry-sdk off before and after; the worker sees its patch.

    The CeleryIntegration patches ``celery.app.trace.build_tracer``; the consumer module,
    imported before sentry-sdk was initialised, holds the unpatched one (as in
    tests/integration/test_sentry.py).
    """
    reset_sentry()
    monkeypatch.setattr(celery_consumer, "build_tracer",
                        lambda *args, **kwargs: celery_trace.build_tracer(*args, **kwargs))
    server = SentryServer("ok")
    yield server
    server.stop()
    reset_sentry()


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """structlog writing JSON lines into a buffer (configure_logging), reset afterwards."""
    stream = io.StringIO()
    configure_logging(stream)
    yield stream
    structlog.reset_defaults()


@pytest.fixture
def smtp() -> Iterator[CapturingSMTPServer]:
    with CapturingSMTPServer(credentials=(SMTP_USER, SMTP_PASSWORD)) as server:
        yield server


@pytest.fixture
def secure_app(password_redis: PasswordRedis) -> Iterator[Celery]:
    """A Celery app whose broker, backend and telemetry Redis need the password."""
    url = password_redis.url(1)
    password_redis.client(1).flushdb()  # our own server and database
    app = Celery("security", broker=url, backend=url, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
                    task_default_queue="tests", result_expires=300,
                    broker_transport_options={"queue_order_strategy": "priority"},
                    worker_prefetch_multiplier=1)
    yield app
    guard = getattr(app, "_telemetry_guard", None)
    if guard is not None:
        guard.close()
    app.close()


# -- what was captured ---------------------------------------------------------------------
def span_texts(spans: InMemorySpanExporter) -> list[str]:
    """Everything a span carries that could hold a value: names, attributes, events, status."""
    texts = []
    for span in spans.get_finished_spans():
        texts.append(span.name)
        texts.append(json.dumps(dict(span.attributes or {}), default=str))
        texts.append(str(span.status.description))
        for event in span.events:
            texts.append(event.name)
            texts.append(json.dumps(dict(event.attributes or {}), default=str))
    return texts


def telemetry_redis(client: redis.Redis, prefix: str = "telemetry_guard:") -> dict[str, bytes]:
    """Every value under the telemetry_guard prefix, by ``key`` or ``key/entry-id/field``."""
    found: dict[str, bytes] = {}
    for raw_key in client.scan_iter(match=prefix + "*"):
        key = raw_key.decode()
        kind = client.type(raw_key).decode()
        if kind == "stream":
            for entry_id, fields in client.xrange(raw_key):
                for field, value in fields.items():
                    found[f"{key}/{entry_id.decode()}/{field.decode()}"] = value
        elif kind == "string":
            found[key] = client.get(raw_key) or b""
        elif kind == "hash":
            for field, value in client.hgetall(raw_key).items():
                found[f"{key}/{field.decode()}"] = value
        else:
            found[key] = repr(client.dump(raw_key)).encode()
    return found


def leaks(text: str | bytes, secrets: tuple[str, ...] = CANARIES) -> list[str]:
    """The secrets found in ``text``."""
    data = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return [secret for secret in secrets if secret in data]


# -- the run -------------------------------------------------------------------------------
def test_canaries_in_kwargs_and_messages_reach_no_sink_but_the_replay_field(
        secure_app: Celery, password_redis: PasswordRedis, sentry: SentryServer,
        smtp: CapturingSMTPServer, json_log: io.StringIO, spans: InMemorySpanExporter) -> None:
    """Two failing tasks (a give-up, a retry then give-up) with every sink on: no canary in
    logs, spans, Sentry, mail or Redis, except the dead letters' replay (where all are)."""
    guard = TelemetryGuard(
        secure_app, sentry_dsn=sentry.dsn,
        email=smtp.settings(user=SMTP_USER, password=SMTP_PASSWORD),
        routes={"high": ["sentry", "email"], "critical": ["sentry", "email"]})

    @secure_app.task(bind=True, base=GuardedTask, name="sec.charge", severity="critical",
                     retry_policy=RetryPolicy(max_retries=0), shared=False)
    def charge(self: GuardedTask, target: str, **kwargs: Any) -> None:
        raise ValueError(MESSAGE)

    @secure_app.task(bind=True, base=GuardedTask, name="sec.sync", shared=False,
                     retry_policy=RetryPolicy(max_retries=1, base_delay=0.05, max_delay=0.1,
                                              retry_on=(ConnectionError,)))
    def sync(self: GuardedTask, target: str, **kwargs: Any) -> None:
        raise ConnectionError(MESSAGE)

    with start_worker(secure_app, pool="solo", perform_ping_check=False, loglevel="WARNING",
                      shutdown_timeout=10, queues=["tests", NOTIFICATIONS]):
        results = [task.apply_async(args=(SECRET_URL,), kwargs=SECRET_KWARGS)
                   for task in (charge, sync)]
        for result in results:
            with pytest.raises(Exception):  # noqa: B017 - whichever the task raised
                result.get(timeout=30)
        mails = smtp.wait_for(2, timeout=30)
        guard.flush()
        wait_for(lambda: len(sentry.events()) >= 2, timeout=10)

    log_text = json_log.getvalue()
    events = [json.loads(line) for line in log_text.splitlines()]
    failed = [e for e in events if e["event"] == "task.failed"]
    assert sorted(e["task_name"] for e in failed) == ["sec.charge", "sec.sync", "sec.sync"]
    assert "[REDACTED]" in log_text  # the messages were there, scrubbed
    assert leaks(log_text) == []
    assert leaks(log_text, (REDIS_PASSWORD, SMTP_PASSWORD)) == []

    texts = span_texts(spans)
    assert any('"exception.message"' in text for text in texts)
    assert [text for text in texts if leaks(text)] == []

    assert sorted(e["tags"]["task_name"] for e in sentry.events()) == ["sec.charge", "sec.sync"]
    assert sentry.errors == []
    assert leaks(sentry.raw()) == []
    assert leaks(sentry.raw(), (REDIS_PASSWORD, SMTP_PASSWORD)) == []

    assert sorted(m.message["Subject"] for m in mails) == [
        "[CRITICAL] sec.charge: ValueError", "[HIGH] sec.sync: ConnectionError"]
    for mail in mails:
        assert leaks(mail.raw) == [] and leaks(mail.body) == []
        assert "[REDACTED]" in mail.body

    stored = telemetry_redis(password_redis.client(1))
    where = {name: leaks(value) for name, value in stored.items() if leaks(value)}
    replays = [name for name in stored
               if name.startswith("telemetry_guard:dead/") and name.endswith("/replay")]
    assert len(replays) == 2  # one dead letter per given-up task
    assert set(where) == set(replays), where
    for name in replays:  # the replay keeps every original argument
        assert set(where[name]) == {PASSWORD, TOKEN, BEARER, URL_PASSWORD}, where[name]
    errors = [name for name in stored if name.startswith("telemetry_guard:errors/")]
    assert len(errors) == 3 and all(b"[REDACTED]" in stored[name] for name in errors)


def test_a_redis_password_is_never_logged_when_the_error_log_cannot_reach_redis(
        celery_app: Celery, json_log: io.StringIO) -> None:
    """telemetry Redis down, its URL with a password: telemetry.sink_failed, no password."""
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"
    guard = TelemetryGuard(celery_app, redis_url=url, error_log_flush_interval=0.05)

    @celery_app.task(bind=True, base=GuardedTask, name="sec.down", shared=False,
                     retry_policy=RetryPolicy(max_retries=0))
    def down(self: GuardedTask, dsn: str) -> None:
        raise RuntimeError(f"cannot reach {url}")

    assert down.apply(args=(url,)).state == "FAILURE"
    wait_for(lambda: "telemetry.sink_failed" in json_log.getvalue(), timeout=10)
    guard.close()
    text = json_log.getvalue()
    assert '"sink": "errorlog"' in text
    assert leaks(text, (REDIS_PASSWORD,)) == []


# -- telemetry-guard check ----------------------------------------------------------------
@pytest.mark.parametrize(("redis_password", "smtp_password"), [
    (REDIS_PASSWORD, SMTP_PASSWORD),
    (REDIS_PASSWORD + "-wrong", SMTP_PASSWORD + "-wrong"),
], ids=["accepted", "refused"])
def test_check_never_prints_the_redis_or_smtp_password(
        password_redis: PasswordRedis, smtp: CapturingSMTPServer, tmp_path: Path,
        redis_password: str, smtp_password: str) -> None:
    """``telemetry-guard check`` (table and --json): passwords masked, accepted or refused."""
    email = smtp.settings(user=SMTP_USER, password=smtp_password)
    env = cli_env(password_redis.url(2, redis_password),
                  TELEMETRY_GUARD_EMAIL=json.dumps(email))
    outputs = [run_cli(env, "check"), run_cli(env, "--json", "check")]
    rows = {row["check"]: row for row in map(json.loads, outputs[1].stdout.splitlines())}
    accepted = redis_password == REDIS_PASSWORD
    assert rows["redis"]["status"] == ("ok" if accepted else "fail"), rows["redis"]
    assert rows["smtp"]["status"] == ("ok" if accepted else "fail"), rows["smtp"]
    assert "***@127.0.0.1" in rows["redis"]["detail"]
    for done in outputs:
        assert "Traceback" not in done.stderr
        assert leaks(done.stdout + done.stderr,
                     (REDIS_PASSWORD, SMTP_PASSWORD, redis_password, smtp_password)) == []


# -- the shapes real secret scanners know ---------------------------------------------------
#: Secret values, each placed in a shape a scanner (or an attacker) recognises.
SHAPE_SECRETS = {
    "aws": "AKIAQ7Z3W5X2M4N6P8R1",
    "jwt": ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYW5hcnktNDQxIiwicm9sZSI6ImFkbWluIn0."
            "Xq3vT9kL2mN8pR4sW6yZ1aB5cD7eF0gH2jK4lM6nP8q"),
    "stripe": "sk_live_Q4nW8zT2kL6pR9sX3vB7mC1d",
    "github": "ghp_Q4nW8zT2kL6pR9sX3vB7mC1dF5gH0jK2lM4n",
    "slack": "xoxb-2718281828-Q4nW8zT2kL6pR9sX",
    "google": "AIzaSyQ4nW8zT2kL6pR9sX3vB7mC1dF5gH0jK2l",
    "pem": "MIIEowIBAAKCAQEAq4nW8zT2kL6pR9sX3vB7mC1dF5gH0jK2lM4nP6qR8sT0uV",
    "token_scheme": "Q4nW8zT2kL6pR9sX3vB7-token-scheme",
    "digest": "6629fae49393a05397450978507c4ef1",
    "aws4_sig": "fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
    "url_slash": "pa/ss-Q4nW8zT2kL6",
    "url_at": "p@ss-R9sX3vB7mC1d",
    "query_sig": "Q9kd83jf74hd62ks91mx",
    "query_key": "Q9zp55vb38qw71er26ty",
    "code": "Q9oauth4f8e2c1a7b3d9",
    "password": "Q9hunter2-passw0rd-xz",
    "pwd": "Q9pwd-canary-3k4j5h",
    "credentials": "Q9cred-canary-8u7y6t",
    "signing_key": "Q9sign-canary-1q2w3e",
    "escaped": "Q9escaped-canary-0p9o",
    "api_key_header": "Q9xapikey-canary-5t6y",
    "asgi": "Q9asgi-canary-7u8i9o",
    "long_key": "Q9longkey-canary-2w3e4r",
    "named": "Q9named-canary-6y7u8i",
    "note": "Q9note-canary-4r5t6y",
    "cause": "Q9cause-canary-9i8u7y",
}
S = SHAPE_SECRETS
PEM_BLOCK = f"-----BEGIN RSA PRIVATE KEY-----\n{S['pem']}\n-----END RSA PRIVATE KEY-----"
SHAPE_MESSAGE = (
    f"upstream refused: Authorization: Token {S['token_scheme']}\n"
    f'Proxy-Authorization: Digest username="svc", response="{S["digest"]}"\n'
    f"Authorization: AWS4-HMAC-SHA256 Credential={S['aws']}/20240101/eu-west-1/s3/aws4_request,"
    f" SignedHeaders=host, Signature={S['aws4_sig']}\n"
    f"dsn postgres://app:{S['url_slash']}@db.internal/prod and redis://:{S['url_at']}@cache\n"
    f"GET https://storage.example/o?key={S['query_key']}&sig={S['query_sig']}&page=2"
    f" https://idp.example/cb?code={S['code']}&state=ok\n"
    f"bearer token {S['jwt']} with key {S['stripe']}, {S['github']}, {S['slack']}, "
    f"{S['google']}\nkey material {PEM_BLOCK}\n"
    f'body={{\\"password\\": \\"{S["escaped"]}\\"}} login(pwd={S["pwd"]!r})\n'
    f"as {collections.namedtuple('Login', 'user password')('svc', S['named'])!r}"
)


def _shape_args() -> tuple[tuple[Any, ...], dict[str, Any]]:
    args = (f"password={S['password']}",
            [("X-Api-Key", S["api_key_header"]), ("Accept", "application/json")])
    kwargs = {
        "pwd": S["pwd"], "credentials": {"user": "svc", "secret": S["credentials"]},
        "signing_key": S["signing_key"],
        "scope": {"headers": [(b"authorization", f"Bearer {S['asgi']}".encode())]},
        "upstream_reporting_service_account_password": S["long_key"],
        "author_id": 7, "max_tokens": 256, "auth_method": "sso",
    }
    return args, kwargs


def scanner_findings(texts: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    """detect-secrets (every plugin, default filters) over each text, as a file of its own."""
    from detect_secrets.core.scan import scan_file
    from detect_secrets.settings import default_settings

    found: dict[str, list[tuple[str, str]]] = {}
    with default_settings(), tempfile.TemporaryDirectory() as folder:
        for index, (name, text) in enumerate(texts.items()):
            path = Path(folder) / f"sink-{index}.txt"
            path.write_text(text, encoding="utf-8")
            hits = [(s.type, s.secret_value or "") for s in scan_file(str(path))]
            if hits:
                found[name] = hits
    return found


def test_the_scanner_oracle_finds_the_raw_corpus() -> None:
    """The oracle can fail: detect-secrets finds the unredacted message and arguments."""
    args, kwargs = _shape_args()
    found = scanner_findings({"message": SHAPE_MESSAGE, "args": repr((args, kwargs)),
                              "password": f'password = "{S["password"]}"'})
    kinds = {kind for hits in found.values() for kind, _ in hits}
    assert {"AWS Access Key", "JSON Web Token", "Private Key", "Stripe Access Key",
            "Secret Keyword"} <= kinds, kinds


def test_secret_shapes_in_args_kwargs_messages_causes_and_notes_reach_no_sink(
        secure_app: Celery, password_redis: PasswordRedis, sentry: SentryServer,
        smtp: CapturingSMTPServer, json_log: io.StringIO, spans: InMemorySpanExporter) -> None:
    """A real worker, every sink on: detect-secrets finds nothing in what each sink wrote and
    no secret value appears, except in the dead letter's replay field."""
    TelemetryGuard(secure_app, sentry_dsn=sentry.dsn,
                   email=smtp.settings(user=SMTP_USER, password=SMTP_PASSWORD))

    @secure_app.task(bind=True, base=GuardedTask, name="sec.shapes", severity="critical",
                     retry_policy=RetryPolicy(max_retries=0), shared=False)
    def shapes(self: GuardedTask, *args: Any, **kwargs: Any) -> None:
        try:
            raise ConnectionError(f"first attempt: password={S['cause']} {SHAPE_MESSAGE}")
        except ConnectionError as cause:
            error = ValueError(SHAPE_MESSAGE)
            error.add_note(f"retried with token={S['note']} and pwd={S['note']}")
            raise error from cause

    args, kwargs = _shape_args()
    with start_worker(secure_app, pool="solo", perform_ping_check=False, loglevel="WARNING",
                      shutdown_timeout=10, queues=["tests", NOTIFICATIONS]):
        result = shapes.apply_async(args=args, kwargs=kwargs)
        with pytest.raises(ValueError):
            result.get(timeout=30)
        mails = smtp.wait_for(1, timeout=30)
        secure_app._telemetry_guard.flush()
        wait_for(lambda: len(sentry.events()) >= 1, timeout=10)

    stored = telemetry_redis(password_redis.client(1))
    replay = {name: v for name, v in stored.items() if name.endswith("/replay")}
    assert len(replay) == 1  # the one place the arguments are kept
    texts = {"log": json_log.getvalue(), "spans": "\n".join(span_texts(spans)),
             "sentry": sentry.raw().decode("utf-8", "replace")
             if isinstance(sentry.raw(), bytes) else str(sentry.raw()),
             **{f"mail {i}": m.raw.decode("utf-8", "replace") if isinstance(m.raw, bytes)
                else str(m.raw) for i, m in enumerate(mails)},
             **{name: v.decode("utf-8", "replace") for name, v in stored.items()
                if name not in replay}}
    assert '"task.failed"' in texts["log"] and "[REDACTED]" in texts["sentry"]
    assert any(name.startswith("telemetry_guard:errors/") for name in texts)
    assert "retried with token=[REDACTED]" in texts["sentry"] + texts["log"]
    assert scanner_findings(texts) == {}
    leaked = {name: [k for k, v in S.items() if v in text] for name, text in texts.items()}
    assert {name: found for name, found in leaked.items() if found} == {}
    errors = next(v for name, v in texts.items() if name.startswith("telemetry_guard:errors/"))
    assert '"max_tokens": 256' in errors and '"author_id": 7' in errors  # innocent keys kept
