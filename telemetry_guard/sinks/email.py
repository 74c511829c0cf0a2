"""E-mail: enqueue the notification task for failures routed to ``email`` (being built)."""

from __future__ import annotations

from typing import Any

from .base import Sink


class EmailSink(Sink):
    """Enqueues ``telemetry_guard.notify`` on the priority notification queue."""

    name = "email"

    def __init__(self, guard: Any) -> None:
        self.guard = guard
