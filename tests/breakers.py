"""Test helpers for breakers: recording listeners and a round-trip-counting Redis connection."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from telemetry_guard.breaker import set_error_listener, set_transition_listener
from telemetry_guard.breaker.redis_store import breaker_client
from telemetry_guard.core.events import BreakerChange


@dataclass
class Heard:
    """Everything the breaker listeners of this process received."""

    changes: list[BreakerChange] = field(default_factory=list)
    errors: list[tuple[str, BaseException | None]] = field(default_factory=list)


@pytest.fixture
def heard() -> Iterator[Heard]:
    """Recording transition and error listeners, restored afterwards."""
    record = Heard()
    previous = (set_transition_listener(record.changes.append),
                set_error_listener(lambda sink, exc: record.errors.append((sink, exc))))
    yield record
    set_transition_listener(previous[0])
    set_error_listener(previous[1])


class CountingConnection(redis.Connection):
    """A real connection that counts how many times it writes to the socket (round trips)."""

    writes = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).writes += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def counted(redis_url: str) -> Iterator[type[CountingConnection]]:
    """The breakers' shared client for ``redis_url`` made of CountingConnections."""
    pool = breaker_client(redis_url).connection_pool
    previous = pool.connection_class
    pool.disconnect()
    pool.reset()
    pool.connection_class = CountingConnection
    yield CountingConnection
    pool.disconnect()
    pool.reset()
    pool.connection_class = previous
