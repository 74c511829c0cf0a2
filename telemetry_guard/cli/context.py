"""What every sub-command gets: the app, the output mode, and one-line errors."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from typing import Any

import click

#: Exit codes: 0 ok, 1 found problems, 2 usage.
EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


class UsageError(click.ClickException):
    """A one-line error on bad input; exit code 2, never a traceback."""

    exit_code = EXIT_USAGE


def load_app(path: str) -> Any:
    """Import a Celery app as ``celery -A`` does: ``module``, ``module:attr``, ``module.attr``."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if attr or "." not in module_name:
            raise UsageError(f"cannot import app module {module_name!r}: {exc}") from None
        module_name, _, attr = module_name.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except Exception:
            raise UsageError(f"cannot import app module {path!r}: {exc}") from None
    except Exception as exc:  # the module itself is broken: one line, not a traceback
        raise UsageError(f"app module {module_name!r} failed to import: "
                         f"{type(exc).__name__}: {exc}") from None
    if attr:
        app = getattr(module, attr, None)
        if app is None:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}")
        return app
    for name in ("app", "celery"):
        app = getattr(module, name, None)
        if app is not None and hasattr(app, "conf"):
            return app
    raise UsageError(f"module {module_name!r} has no Celery app named 'app' or 'celery'")


@dataclass
class CliContext:
    """The group's context object."""

    app_path: str | None = None
    as_json: bool = False
    app: Any = None
    _guard: Any = field(default=None, repr=False)

    def get_app(self) -> Any:
        """The Celery app; a clear usage error when none was given."""
        if self.app is None:
            if not self.app_path:
                raise UsageError("no app given: use -A/--app MODULE (or TELEMETRY_GUARD_APP)")
            self.app = load_app(self.app_path)
        return self.app

    def guard(self) -> Any:
        """The app's TelemetryGuard (the one its module created, or a default one)."""
        if self._guard is None:
            app = self.get_app()
            self._guard = getattr(app, "_telemetry_guard", None)
            if self._guard is None:
                from ..guard import TelemetryGuard

                self._guard = TelemetryGuard(app)
        return self._guard
