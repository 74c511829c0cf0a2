"""Fixtures of the fault matrix: private servers to break, and the matrix printed at the end."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.reliability.matrix import ROWS, render
from tests.reliability.redis_servers import start_private_redis
from tests.servers import RedisServer


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the fault matrix (with or without ``-s``) when any fault ran."""
    if not ROWS:
        return
    terminalreporter.write_sep("=", "fault matrix (same mixed workload with and without the fault)")
    for line in render(ROWS):
        terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def private_redis() -> Iterator[Callable[..., RedisServer]]:
    """Starts redis-servers of their own (``persistent=True``: AOF); all stopped after."""
    started: list[RedisServer] = []

    def start(*, persistent: bool = False) -> RedisServer:
        server = start_private_redis(persistent=persistent)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)

