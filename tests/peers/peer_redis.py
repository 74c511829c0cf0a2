"""Pytest plugin (``-p peer_redis``): a peer suite's Redis is the runner's private server.

Sentry's Celery beat tests read their broker from a module global, ``REDIS_SERVER``
(``redis://127.0.0.1:6379``), when their ``celery_config`` fixture runs. Before each test of
a module that has one, this plugin sets it to ``TELEMETRY_GUARD_PEER_REDIS_URL``, the
redis-server the runner started on a free port, so that no test touches a shared Redis.
"""

from __future__ import annotations

import os

import pytest

URL_VARIABLE = "TELEMETRY_GUARD_PEER_REDIS_URL"
#: Module globals a peer suite keeps its Redis address in.
ADDRESS_GLOBALS = ("REDIS_SERVER",)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Point the test's module at the private server; no server given, the test errors."""
    module = getattr(item, "module", None)
    names = [name for name in ADDRESS_GLOBALS if hasattr(module, name)]
    if not names:
        return
    url = os.environ.get(URL_VARIABLE)
    if not url:
        pytest.fail(f"{URL_VARIABLE} is not set: this test would use a shared Redis",
                    pytrace=False)
    for name in names:
        setattr(module, name, url)
