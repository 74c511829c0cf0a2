"""What every sub-command gets: the app, its settings, the output mode, and one-line errors.

The CLI reads the app's settings without building a ``TelemetryGuard``: the guard the app
module made, if any, gives them; otherwise they are resolved from the app as a guard would.
Only the ``breakers`` commands use a guard (:meth:`CliContext.guard`), because the breakers
they read and command are wired by it.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from ..integration.config import Settings

#: Exit codes: 0 ok, 1 found problems, 2 usage.
EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2
F = TypeVar("F", bound=Callable[..., Any])


class UsageError(click.ClickException):
    """A one-line error on bad input; exit code 2, never a traceback."""

    exit_code = EXIT_USAGE


def describe(exc: BaseException) -> str:
    """An exception as one line: ``Type: message``."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def one_line_errors(what: str) -> Iterator[None]:
    """Any error inside but a click one becomes ``UsageError("cannot load <what>: ...")``."""
    try:
        yield
    except click.ClickException:
        raise
    except Exception as exc:  # the app module or its settings raised
        raise UsageError(f"cannot load {what}: {describe(exc)}") from None


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


def settings_of(app: Any) -> Settings:
    """The app's telemetry_guard settings: its guard's, else resolved as a guard would
    (keyword settings aside, which only a guard holds). Builds no guard."""
    from ..integration.task_guard import guard_of
    guard = guard_of(app)
    if guard is not None:
        return guard.settings  # type: ignore[no-any-return]
    from ..integration.config import Settings

    return Settings.from_app(app)


@dataclass
class CliContext:
    """The group's context object."""

    app_path: str | None = None
    as_json: bool = False
    app: Any = None
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        """The app as the user named it, for messages."""
        return self.app_path or "the app"

    def get_app(self) -> Any:
        """The Celery app; a clear usage error when none was given or it cannot be loaded."""
        if self.app is None:
            if not self.app_path:
                raise UsageError("no app given: use -A/--app MODULE (or TELEMETRY_GUARD_APP)")
            with one_line_errors(self.where):
                self.app = load_app(self.app_path)
        return self.app

    def settings(self) -> Settings:
        """The app's settings (see :func:`settings_of`); a usage error when they are wrong."""
        if self._settings is None:
            app = self.get_app()
            with one_line_errors(f"the telemetry_guard settings of {self.where}"):
                from ..integration.config import check_budget_has_redis
                from ..stores.redis_client import use_redis_options

                settings = settings_of(app)
                check_budget_has_redis(settings.retry_budget, settings.redis_url)
                if settings.redis_url:  # every client the CLI builds connects as the app's
                    use_redis_options(settings.redis_url, settings.redis_options)
            self._settings = settings
        return self._settings

    def guard(self) -> Any:
        """The app's TelemetryGuard: the one its module made, else one built here.

        Only for commands that change breakers: their transitions are told (logs, metrics,
        Sentry, e-mail) through the guard, which also gives app breakers their Redis.
        """
        from ..integration.task_guard import guard_of

        app = self.get_app()
        with one_line_errors(self.where):
            guard = guard_of(app)
            if guard is None:
                from ..integration.guard import TelemetryGuard

                guard = TelemetryGuard(app)
            _ = guard.settings  # read now: a bad setting is a usage error here
        return guard


def cli_context(ctx: click.Context) -> CliContext:
    """The group's CliContext (a default one when a command runs on its own)."""
    return ctx.ensure_object(CliContext)


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        cli_context(ctx).as_json = True


def json_option(fn: F) -> F:
    """``--json`` on a sub-command, the same as the group's ``--json``."""
    return click.option("--json", "as_json", is_flag=True, expose_value=False,
                        callback=_set_json, help="JSON lines instead of a table.")(fn)


class _Stderr:
    """Whatever ``sys.stderr`` is at the time of writing (test runners swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def route_logs_to_stderr() -> None:
    """Keep stdout for results: send structlog's output to stderr, unless the app set it up."""
    import structlog

    if structlog.is_configured():
        return
    from ..sinks.logging import configure_logging

    configure_logging(_Stderr())  # type: ignore[arg-type]
