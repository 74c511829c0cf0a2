"""The notification task and its throttling (being built)."""

from __future__ import annotations

from typing import Any


def register_notify_task(guard: Any) -> Any:
    """Register ``telemetry_guard.notify`` on the guard's app."""
    return None
