"""The operator's command line: ``telemetry-guard -A proj ...`` and ``celery -A proj guard ...``.

One click group, installed twice. Sub-commands live one per module and are
added here; each takes the Celery app from the group's context. A sub-command's module
is imported only when that command runs: ``--help`` lists them from :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from .context import CliContext, load_app
from .output import printable

#: Sub-commands: the click command each module exports, and the first line of its help.
SUBCOMMANDS = {
    "errors": ("telemetry_guard.cli.errors:errors",
               "Search, show, follow and count the error log."),
    "dead": ("telemetry_guard.cli.dead:dead",
             "List, show, replay and purge dead letters (given-up tasks)."),
    "breakers": ("telemetry_guard.cli.breakers:breakers",
                 "Circuit breakers: state, mode, counters, time until half-open; open, close, "
                 "reset."),
    "check": ("telemetry_guard.cli.check:check",
              "Check the set-up: broker, Redis, metrics dir, SMTP, Sentry, notification "
              "consumers, clocks."),
    "periodic": ("telemetry_guard.cli.periodic:periodic",
                 "Periodic tasks: schedule, last run, last success, state; beat's status."),
    "demo": ("telemetry_guard.cli.demo:demo",
             "Run healthy, flaky and failing tasks, a downstream outage and a CRITICAL e-mail."),
}


class _LazyGroup(click.Group):
    """Imports a sub-command's module only when that command runs."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the sub-command; an error's text reaches the terminal printable only."""
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            exc.message = printable(exc.message)
            raise

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands' list, as click writes it, without importing their modules."""
        limit = formatter.width - 6 - max(len(name) for name in SUBCOMMANDS)
        rows = [(name, click.Command(name, help=SUBCOMMANDS[name][1]).get_short_help_str(limit))
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module, _, attr = SUBCOMMANDS[name][0].partition(":")
        try:
            return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            return None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-A", "--app", "app_path", envvar="TELEMETRY_GUARD_APP", metavar="MODULE",
              help="The Celery app, as for `celery -A` (module or module:attribute).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.pass_context
def main(ctx: click.Context, app_path: str | None, as_json: bool) -> None:
    """Search the error log, replay dead letters, control breakers, check the set-up."""
    ctx.obj = CliContext(app_path=app_path, as_json=as_json)


@click.group(name="guard", cls=_LazyGroup)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.pass_context
def celery_guard(ctx: click.Context, as_json: bool) -> None:
    """telemetry_guard: error log, dead letters, breakers, set-up check."""
    celery_ctx: Any = ctx.obj
    ctx.obj = CliContext(app=getattr(celery_ctx, "app", None), as_json=as_json)


__all__ = ["CliContext", "celery_guard", "load_app", "main"]
