"""Variant ``bare``: a plain Celery task, no telemetry at all."""

from __future__ import annotations

from ._common import NOOP, make_app, run_noop

app = make_app("bench-bare")


@app.task(name=NOOP, acks_late=True, ignore_result=True)
def noop(i: int, fail_every: int) -> None:
    """Does nothing; every ``fail_every``-th call raises ValueError."""
    run_noop(i, fail_every)
