"""``telemetry-guard demo``: a live workload on an embedded broker (``telemetry_guard.demo``)."""

from __future__ import annotations

import sys

import click

from ..demo.runner import DEFAULT_DURATION, DemoOptions, DemoSetupError, run_demo


@click.command(name="demo", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--duration", type=click.FloatRange(min=1.0), default=DEFAULT_DURATION,
              show_default=True, help="Seconds of workload.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=0,
              help="Port of /metrics on 127.0.0.1 (default: a free one).")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Write the JSON log lines here and keep them (default: a temporary "
                   "file, removed on exit).")
def demo(duration: float, metrics_port: int, log_file: str | None) -> None:
    """Run healthy, flaky and failing tasks, a downstream outage and a CRITICAL e-mail.

    Needs no services: a private redis-server on a free port when the binary exists,
    otherwise Celery's in-memory transport; the worker runs in this process.
    """
    try:
        code = run_demo(DemoOptions(duration=duration, metrics_port=metrics_port,
                                    log_file=log_file))
    except DemoSetupError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)
