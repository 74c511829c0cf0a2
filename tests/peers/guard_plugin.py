"""Pytest plugin (``-p guard_plugin``): a guard on every Celery app a peer makes.

``TELEMETRY_GUARD_PEER_MODE`` chooses what ``Celery.__init__`` does besides its work:

* ``bare``: nothing (the baseline);
* ``guard``: ``TelemetryGuard(app)`` right after construction, as the README shows;
* ``guarded_task``: the same, and ``GuardedTask`` as ``task_cls`` unless the caller
  passed one (or the app's class sets its own).

Every guard points at nothing external: no Redis, Sentry DSN, e-mail or metrics port. A
Sentry client the suite initialised itself (``sentry_init``) is the guard's, as in an
application that calls ``sentry_sdk.init``.

``telemetry_guard`` is imported when the first app is made, not with the plugin: it imports
sentry-sdk, which Sentry's suite wants imported after its own ``tests/__init__.py``.

``TELEMETRY_GUARD_PEER_STATS`` names a JSON file this plugin writes at the end, so a
runner can tell that the guards were really made.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import os
from typing import Any

import celery
import pytest
from celery.app.base import app_has_custom

MODE_VARIABLE = "TELEMETRY_GUARD_PEER_MODE"
STATS_VARIABLE = "TELEMETRY_GUARD_PEER_STATS"
MODES = ("bare", "guard", "guarded_task")
GUARDED_TASK = "telemetry_guard:GuardedTask"
#: Keyword settings that win over app.conf and TELEMETRY_GUARD_* variables.
ISOLATED_SETTINGS: dict[str, Any] = {
    "redis_url": None,
    "sentry_dsn": None,  # no DSN of ours: the suite's own sentry_sdk.init client, if any
    "email": {},
    "metrics_port": None,
    "retry_budget": None,
}
_MARK = "_peer_suite_guarded"

stats: dict[str, Any] = {
    "mode": "bare", "apps": 0, "guards": 0, "guarded_task_cls": 0,
    "celery_file": celery.__file__, "telemetry_guard_file": None,
}


def peer_mode() -> str:
    """The mode asked for in the environment; an unknown one is a usage error."""
    mode = os.environ.get(MODE_VARIABLE, "bare").strip() or "bare"
    if mode not in MODES:
        raise pytest.UsageError(f"{MODE_VARIABLE}={mode!r}; valid: {', '.join(MODES)}")
    return mode


def caller_chose_task_cls(app: Any, bound: inspect.BoundArguments) -> bool:
    """Whether ``task_cls`` was passed, or the app's class sets its own."""
    if bound.arguments.get("task_cls"):
        return True
    return bool(app_has_custom(app, "task_cls"))


def install(mode: str) -> None:
    """Wrap ``Celery.__init__`` so every app gets what ``mode`` asks for."""
    stats["mode"] = mode
    original = celery.Celery.__init__
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        stats["apps"] += 1
        if mode == "guarded_task":
            bound = signature.bind(self, *args, **kwargs)
            if not caller_chose_task_cls(self, bound):
                bound.arguments["task_cls"] = GUARDED_TASK
                args, kwargs = bound.args[1:], bound.kwargs
                stats["guarded_task_cls"] += 1
        original(self, *args, **kwargs)
        if mode != "bare" and not self.__dict__.get(_MARK):
            self.__dict__[_MARK] = True
            from telemetry_guard import TelemetryGuard

            TelemetryGuard(self, **ISOLATED_SETTINGS)
            stats["guards"] += 1

    celery.Celery.__init__ = __init__


def telemetry_guard_file() -> str:
    """Where ``telemetry_guard`` is imported from, found without importing it."""
    spec = importlib.util.find_spec("telemetry_guard")
    return spec.origin if spec is not None and spec.origin else "?"


def pytest_configure(config: pytest.Config) -> None:
    """Install the wrapper before any test module or conftest makes an app."""
    stats["telemetry_guard_file"] = telemetry_guard_file()
    install(peer_mode())


def pytest_report_header(config: pytest.Config) -> str:
    """Say which mode ran and which Celery was tested."""
    return (f"telemetry_guard peer mode: {stats['mode']}; celery {celery.__version__} from "
            f"{os.path.dirname(stats['celery_file'])}; telemetry_guard from "
            f"{os.path.dirname(stats['telemetry_guard_file'])}")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Write how many apps were made and guarded, for the runner to check."""
    path = os.environ.get(STATS_VARIABLE)
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(stats, handle)
