"""The operator's command line: ``telemetry-guard -A proj ...`` and ``celery -A proj guard ...``.

One click group, installed twice. Sub-commands live one per module and are
added here; each takes the Celery app from the group's context.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from .context import CliContext, load_app
from .output import printable

#: Sub-command modules and the click command each exports.
SUBCOMMANDS = {
    "errors": "telemetry_guard.cli.errors:errors",
    "dead": "telemetry_guard.cli.dead:dead",
    "breakers": "telemetry_guard.cli.breakers:breakers",
    "check": "telemetry_guard.cli.check:check",
    "demo": "telemetry_guard.cli.demo:demo",
}


class _LazyGroup(click.Group):
    """Imports a sub-command's module only when it is run or listed."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the sub-command; an error's text reaches the terminal printable only."""
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            exc.message = printable(exc.message)
            raise

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
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
