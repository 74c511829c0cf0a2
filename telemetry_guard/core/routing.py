"""Severity routing: which notification channels (``sentry``, ``email``) hear of a failure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .channels import CHANNELS
from .classify import Severity


class Router:
    """Maps a severity to channels; a task's own ``routes`` option replaces the app's table."""

    def __init__(self, routes: Mapping[str, Iterable[str]]) -> None:
        self.routes = _checked(routes, "telemetry_guard_routes")

    def channels_for(self, severity: Severity, *, expected: bool = False,
                     task_routes: Mapping[str, Iterable[str]] | None = None) -> frozenset[str]:
        """The channels for one failure; expected errors (the task's ``throws``) get none."""
        if expected:
            return frozenset()
        table = self.routes if task_routes is None else {
            **self.routes, **_checked(task_routes, "task option routes")}
        return frozenset(table.get(severity.label, ()))


def _checked(routes: Mapping[str, Iterable[str]], source: str) -> dict[str, tuple[str, ...]]:
    table: dict[str, tuple[str, ...]] = {}
    for severity, channels in routes.items():
        label = Severity.parse(severity).label
        names = (channels,) if isinstance(channels, str) else tuple(channels)
        unknown = [c for c in names if c not in CHANNELS]
        if unknown:
            raise ValueError(f"{source}: unknown channel(s) {', '.join(map(str, unknown))}; "
                             f"valid: {', '.join(CHANNELS)}")
        table[label] = names
    return table
