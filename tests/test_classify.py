"""Tests for telemetry_guard.core.classify: Severity, default rules, user rules."""

from __future__ import annotations

import socket
import sqlite3
import time

import billiard.exceptions
import celery.exceptions
import kombu.exceptions
import pytest
import redis.exceptions

from telemetry_guard.core.classify import (
    DEFAULT_CLASSIFIER,
    Classifier,
    Severity,
    classify,
    escalate,
)


def fake_exception(module: str, name: str, base: type[BaseException] = Exception) -> type:
    """An exception class that claims to live in ``module``, as a library's would."""
    return type(name, (base,), {"__module__": module, "__qualname__": name})


class PaymentDeclined(Exception):
    """A business error of the test suite."""


def test_severity_is_ordered_low_to_critical() -> None:
    """LOW < MEDIUM < HIGH < CRITICAL."""
    assert Severity.LOW < Severity.MEDIUM < Severity.HIGH < Severity.CRITICAL
    assert max(Severity.MEDIUM, Severity.HIGH) is Severity.HIGH


def test_severity_labels_are_lowercase_names() -> None:
    """label, str() and f-strings give the lowercase name used in metrics, logs and tags."""
    assert [s.label for s in Severity] == ["low", "medium", "high", "critical"]
    assert str(Severity.HIGH) == "high"
    assert f"{Severity.CRITICAL}" == "critical"
    assert f"{Severity.LOW:>6}" == "   low"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("high", Severity.HIGH),
        ("HIGH", Severity.HIGH),
        (" Medium ", Severity.MEDIUM),
        (4, Severity.CRITICAL),
        (Severity.LOW, Severity.LOW),
    ],
)
def test_parse_accepts_names_in_any_case_numbers_and_members(
    value: object, expected: Severity
) -> None:
    """parse takes a member, its name in any case, or its number."""
    assert Severity.parse(value) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["severe", "", 0, 5, True, None, 2.0])
def test_parse_rejects_unknown_values_listing_valid_names(value: object) -> None:
    """An unknown severity raises ValueError listing the valid names."""
    with pytest.raises(ValueError, match="low, medium, high, critical"):
        Severity.parse(value)  # type: ignore[arg-type]


def test_escalate_returns_at_least_the_floor() -> None:
    """escalate raises a severity to the floor and never lowers it."""
    assert escalate(Severity.LOW, Severity.HIGH) is Severity.HIGH
    assert escalate(Severity.CRITICAL, Severity.HIGH) is Severity.CRITICAL
    assert escalate(Severity.HIGH, Severity.HIGH) is Severity.HIGH


def test_memory_error_is_critical() -> None:
    """MemoryError is CRITICAL."""
    assert classify(MemoryError()) is Severity.CRITICAL


@pytest.mark.parametrize(
    "exc_type",
    [
        billiard.exceptions.WorkerLostError,
        billiard.exceptions.SoftTimeLimitExceeded,
        billiard.exceptions.TimeLimitExceeded,
        celery.exceptions.WorkerLostError,
        celery.exceptions.SoftTimeLimitExceeded,
        celery.exceptions.TimeLimitExceeded,
    ],
)
def test_worker_lost_and_time_limits_are_high(exc_type: type[BaseException]) -> None:
    """Celery/billiard worker-lost and time-limit errors are HIGH."""
    assert classify(exc_type()) is Severity.HIGH


def test_subclass_of_a_celery_time_limit_is_high() -> None:
    """A user subclass of SoftTimeLimitExceeded is matched through the MRO."""

    class SlowReport(celery.exceptions.SoftTimeLimitExceeded):
        pass

    assert classify(SlowReport()) is Severity.HIGH


def test_worker_errors_are_matched_by_module_and_name_not_identity() -> None:
    """A class named like billiard's in billiard.exceptions matches without the real import."""
    assert classify(fake_exception("billiard.exceptions", "WorkerLostError")()) is Severity.HIGH
    assert classify(fake_exception("myapp.errors", "WorkerLostError")()) is Severity.LOW


@pytest.mark.parametrize(
    "module",
    [
        "psycopg",
        "psycopg.errors",
        "psycopg2",
        "psycopg2.errors",
        "sqlalchemy.exc",
        "django.db.utils",
        "pymysql.err",
        "MySQLdb._exceptions",
        "asyncpg.exceptions",
    ],
)
def test_database_errors_are_high(module: str) -> None:
    """Exceptions from database driver and ORM modules are HIGH."""
    assert classify(fake_exception(module, "OperationalError")()) is Severity.HIGH


def test_real_sqlite3_error_is_high() -> None:
    """The stdlib sqlite3 errors are database errors."""
    assert classify(sqlite3.OperationalError("database is locked")) is Severity.HIGH


def test_database_match_is_inherited_by_subclasses() -> None:
    """A user subclass of a driver error is HIGH through the MRO."""
    driver_error = fake_exception("sqlalchemy.exc", "IntegrityError")
    mine = type("DuplicateOrder", (driver_error,), {"__module__": "shop.orders"})
    assert classify(mine()) is Severity.HIGH


def test_database_module_prefix_stops_at_a_dotted_boundary() -> None:
    """psycopgx and django.dbtools are not psycopg and django.db."""
    assert classify(fake_exception("psycopgx", "Error")()) is Severity.LOW
    assert classify(fake_exception("django.dbtools", "Error")()) is Severity.LOW
    assert classify(fake_exception("mysqlite3", "Error")()) is Severity.LOW


def test_sql_in_a_class_or_module_name_is_not_a_database_error() -> None:
    """MySQLConfigWarning from myapp.sql_helpers is LOW: no guessing from the repr."""
    warning = fake_exception("myapp.sql_helpers", "MySQLConfigWarning", Warning)
    assert "sql" in str(warning).lower()
    assert classify(warning()) is Severity.LOW


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionError(),
        ConnectionRefusedError(),
        ConnectionResetError(),
        TimeoutError(),
        socket.gaierror(),
    ],
)
def test_builtin_connection_and_timeout_errors_are_medium(exc: BaseException) -> None:
    """Builtin ConnectionError, TimeoutError, their subclasses and socket.gaierror are MEDIUM."""
    assert classify(exc) is Severity.MEDIUM


@pytest.mark.parametrize(
    "exc_type",
    [
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        redis.exceptions.BusyLoadingError,
        kombu.exceptions.OperationalError,
    ],
)
def test_real_redis_and_kombu_connection_errors_are_medium(exc_type: type[BaseException]) -> None:
    """The installed redis and kombu connection errors are MEDIUM."""
    assert classify(exc_type()) is Severity.MEDIUM


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("redis.exceptions", "ConnectionError"),
        ("redis.exceptions", "TimeoutError"),
        ("amqp.exceptions", "ConnectionError"),
        ("amqp.exceptions", "RecoverableConnectionError"),
        ("requests.exceptions", "ConnectionError"),
        ("requests.exceptions", "Timeout"),
        ("httpx", "ConnectError"),
        ("httpx._exceptions", "TimeoutException"),
        ("urllib3.exceptions", "NewConnectionError"),
    ],
)
def test_client_library_connection_errors_are_medium(module: str, name: str) -> None:
    """Connection and timeout errors of redis, amqp, requests, httpx, urllib3 are MEDIUM."""
    assert classify(fake_exception(module, name)()) is Severity.MEDIUM


def test_connection_error_names_outside_known_modules_are_low() -> None:
    """A ConnectionError-named class from an unknown module is not a connection error."""
    assert classify(fake_exception("myapp.errors", "ConnectionError")()) is Severity.LOW
    assert classify(fake_exception("redisx.exceptions", "ConnectionError")()) is Severity.LOW


def test_other_redis_errors_are_low() -> None:
    """A redis error that is not about the connection falls through to LOW."""
    assert classify(redis.exceptions.ResponseError("WRONGTYPE")) is Severity.LOW


def test_everything_else_is_low() -> None:
    """An exception no rule knows is LOW."""
    assert classify(ValueError("bad input")) is Severity.LOW
    assert classify(PaymentDeclined()) is Severity.LOW


def test_default_rules_apply_in_order() -> None:
    """A class matching several default rules takes the first: database before connection."""
    lost_db = fake_exception("psycopg2", "OperationalError", ConnectionError)
    assert classify(lost_db()) is Severity.HIGH
    out_of_memory_timeout = type("Oom", (MemoryError, TimeoutError), {})
    assert classify(out_of_memory_timeout()) is Severity.CRITICAL


def test_user_rules_come_before_the_defaults() -> None:
    """A registered rule overrides the default severity of the same exception."""
    classifier = Classifier()
    classifier.register(ConnectionResetError, Severity.CRITICAL)
    assert classifier.classify(ConnectionResetError()) is Severity.CRITICAL
    assert classifier.classify(ConnectionRefusedError()) is Severity.MEDIUM


def test_user_rules_match_in_registration_order() -> None:
    """The first registered rule that matches wins."""
    classifier = Classifier()
    classifier.register(PaymentDeclined, "high")
    classifier.register(Exception, Severity.MEDIUM)
    assert classifier.classify(PaymentDeclined()) is Severity.HIGH
    assert classifier.classify(KeyError()) is Severity.MEDIUM


def test_tuple_rules_match_any_of_their_classes() -> None:
    """A tuple matcher matches an instance of any class in it."""
    classifier = Classifier()
    classifier.register((KeyError, PaymentDeclined), Severity.HIGH)
    assert classifier.classify(KeyError()) is Severity.HIGH
    assert classifier.classify(PaymentDeclined()) is Severity.HIGH
    assert classifier.classify(IndexError()) is Severity.LOW


def test_predicate_rules_see_the_exception_instance() -> None:
    """A predicate rule can decide on the exception's contents."""
    classifier = Classifier()
    classifier.register(lambda exc: "fraud" in str(exc), Severity.CRITICAL)
    assert classifier.classify(PaymentDeclined("fraud suspected")) is Severity.CRITICAL
    assert classifier.classify(PaymentDeclined("insufficient funds")) is Severity.LOW


def test_a_raising_predicate_is_skipped() -> None:
    """A predicate that raises counts as no match and later rules still apply."""

    def broken(exc: BaseException) -> bool:
        raise RuntimeError("bug in a user rule")

    classifier = Classifier()
    classifier.register(broken, Severity.CRITICAL)
    classifier.register(PaymentDeclined, Severity.HIGH)
    assert classifier.classify(PaymentDeclined()) is Severity.HIGH
    assert classifier.classify(TimeoutError()) is Severity.MEDIUM


def test_classify_never_raises_on_strange_input() -> None:
    """Objects that are not exceptions, and exceptions with odd metadata, classify as LOW."""

    class Weird(Exception):
        pass

    Weird.__module__ = None  # type: ignore[assignment]
    assert classify(Weird()) is Severity.LOW
    assert classify(None) is Severity.LOW  # type: ignore[arg-type]


def test_classifier_without_defaults_knows_only_user_rules() -> None:
    """defaults=False leaves only the registered rules; everything else is LOW."""
    classifier = Classifier(defaults=False)
    assert classifier.classify(MemoryError()) is Severity.LOW
    classifier.register(MemoryError, Severity.MEDIUM)
    assert classifier.classify(MemoryError()) is Severity.MEDIUM


@pytest.mark.parametrize("match", [int, (ValueError, str), "ValueError", 3])
def test_register_rejects_invalid_matchers(match: object) -> None:
    """A matcher that is neither exception classes nor a callable raises TypeError."""
    with pytest.raises(TypeError):
        Classifier().register(match, Severity.HIGH)  # type: ignore[arg-type]


def test_register_rejects_unknown_severity_names() -> None:
    """An unknown severity name is refused when the rule is registered."""
    with pytest.raises(ValueError, match="severity"):
        Classifier().register(ValueError, "urgent")


def test_new_classifiers_do_not_share_user_rules() -> None:
    """Rules registered on one classifier do not leak into another or the default one."""
    one = Classifier()
    one.register(ValueError, Severity.CRITICAL)
    assert Classifier().classify(ValueError()) is Severity.LOW
    assert DEFAULT_CLASSIFIER.classify(ValueError()) is Severity.LOW


def test_classifying_a_common_exception_takes_microseconds() -> None:
    """Default classification of a known type is cached and costs a few microseconds."""
    exc = ConnectionResetError()
    classify(exc)
    rounds = 20_000
    start = time.perf_counter()
    for _ in range(rounds):
        classify(exc)
    per_call = (time.perf_counter() - start) / rounds
    assert per_call < 20e-6


def test_a_missed_periodic_run_is_high_by_default() -> None:
    """A periodic run that never came is routed (Sentry) unless the task's rules say else."""
    from telemetry_guard import PeriodicRunMissed

    assert classify(PeriodicRunMissed("shop.sync_rates", 95.0, 60.0)) is Severity.HIGH
