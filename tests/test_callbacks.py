"""Error callbacks: MRO resolution, order after recording, fail-open."""

from __future__ import annotations

from typing import Any

from celery import Celery
from prometheus_client import REGISTRY

from telemetry_guard import GuardedTask, TelemetryGuard
from telemetry_guard.integration.callbacks import ErrorCallbacks, reset_connection_pool
from telemetry_guard.testing import capture_events


class DatabaseError(Exception):
    pass


class OperationalError(DatabaseError):
    pass


def test_nearest_registered_class_along_the_mro_wins() -> None:
    """A subclass's own callbacks run instead of its base class's."""
    callbacks = ErrorCallbacks()
    callbacks.register(DatabaseError, lambda exc, event: "base")
    callbacks.register(OperationalError, lambda exc, event: "exact")
    assert [cb(None, None) for cb in callbacks.resolve(OperationalError())] == ["exact"]
    assert [cb(None, None) for cb in callbacks.resolve(DatabaseError())] == ["base"]
    assert callbacks.resolve(ValueError()) == []


def test_registering_a_non_exception_is_a_clear_error() -> None:
    """on_error() refuses things that are not exception classes."""
    callbacks = ErrorCallbacks()
    for bad in (str, "ValueError", 3):
        try:
            callbacks.register(bad, print)  # type: ignore[arg-type]
        except TypeError as exc:
            assert "exception class" in str(exc)
        else:
            raise AssertionError(f"{bad!r} accepted")


def test_callbacks_run_after_the_event_is_recorded() -> None:
    """A callback sees the failure already delivered to the sinks, and gets the event."""
    app = Celery("cb", broker="memory://", set_as_current=False)
    guard = TelemetryGuard(app, redis_url=None)
    seen: list[tuple[int, str]] = []

    @app.task(bind=True, base=GuardedTask, name="cb.query")
    def query(self: Any) -> None:
        raise OperationalError("server closed the connection")

    with capture_events() as events:
        guard.on_error(OperationalError,
                       lambda exc, event: seen.append((len(events), event.exception_type)))
        result = query.apply()
    guard.close()
    assert isinstance(result.result, OperationalError)
    assert seen == [(1, "OperationalError")]


def test_base_class_callbacks_and_a_raising_one_is_counted() -> None:
    """With only base-class callbacks, all run; one that raises is counted and skipped."""
    app = Celery("cb2", broker="memory://", set_as_current=False)
    guard = TelemetryGuard(app, redis_url=None)
    resets: list[int] = []

    def broken(exc: BaseException, event: Any) -> None:
        raise RuntimeError("callback bug")

    guard.on_error(DatabaseError, broken)
    guard.on_error(DatabaseError, reset_connection_pool(lambda: resets.append(1)))

    @app.task(bind=True, base=GuardedTask, name="cb.query2")
    def query(self: Any) -> None:
        raise OperationalError("server closed the connection")

    before = REGISTRY.get_sample_value("telemetry_guard_telemetry_errors_total",
                                       {"sink": "error_callback"}) or 0
    result = query.apply()
    assert isinstance(result.result, OperationalError)
    assert resets == [1]
    after = REGISTRY.get_sample_value("telemetry_guard_telemetry_errors_total",
                                      {"sink": "error_callback"})
    assert after == before + 1
    guard.close()
