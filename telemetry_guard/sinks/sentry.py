"""Sentry: one event per failure routed to the ``sentry`` channel (being built)."""

from __future__ import annotations

from typing import Any

from .base import Sink


class SentrySink(Sink):
    """Reports routed failures to Sentry."""

    name = "sentry"

    def __init__(self, guard: Any) -> None:
        self.guard = guard

    @staticmethod
    def wanted(dsn: str | None) -> bool:
        """Whether Sentry reporting is on."""
        return False
