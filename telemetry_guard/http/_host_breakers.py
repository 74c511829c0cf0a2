"""The breakers of ``resilient_request``: one per host, at most ``MAX_HOST_BREAKERS`` a process."""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable

from ..breaker import CircuitBreaker, get_breaker, unregister

#: Host breakers one process keeps; past it the least recently used is dropped (its state
#: stays in Redis and is read again when that host is next called). The process's limit
#: is ``host_breakers.limit``.
MAX_HOST_BREAKERS = 256


def breaker_name(url: str) -> str:
    """``http:<host>`` (with ``:<port>`` when the URL names one): one breaker per host."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"http:{host}:{parts.port}" if parts.port is not None else f"http:{host}"


class HostBreakers:
    """The breakers ``resilient_request`` made, one per host, at most ``limit`` of them.

    Past the limit the least recently used is unregistered. A Redis breaker loses nothing:
    its state is in Redis, and a call still holding it finishes on it. A memory breaker is
    dropped only when closed, without failures, in mode normal (nothing to forget). A
    breaker someone else registered under ``http:<host>`` is used as it is, never dropped.
    """

    def __init__(self, limit: int = MAX_HOST_BREAKERS) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._used: OrderedDict[str, CircuitBreaker] = OrderedDict()
        self._fork_hook = False

    def __len__(self) -> int:
        return len(self._used)

    def get(self, name: str, build: Callable[[], CircuitBreaker]) -> CircuitBreaker:
        """The breaker registered as ``name``, else ``build()``'s, which is then kept."""
        if not self._fork_hook:
            self._fork_hook = True
            os.register_at_fork(after_in_child=self.after_fork)
        with self._lock:
            found = get_breaker(name)
            if found is not None:
                kept = self._used.get(name)
                if kept is found:
                    self._used.move_to_end(name)
                elif kept is not None:
                    del self._used[name]  # replaced by a breaker of the application's
                return found
            made = self._used[name] = build()
            if len(self._used) > self.limit:
                self._drop_idle()
            return made

    def after_fork(self) -> None:
        """A new lock in a forked child (another thread of the parent may have held it)."""
        self._lock = threading.Lock()

    def _drop_idle(self) -> None:
        excess = len(self._used) - self.limit
        for name, breaker in list(self._used.items())[:-1]:
            if excess <= 0:
                return
            if breaker.storage == "memory":
                snap = breaker.snapshot()
                if (snap.state, snap.mode, snap.consecutive_failures) != ("closed", "normal", 0):
                    continue
            del self._used[name]
            unregister(breaker)
            excess -= 1


#: This process's host breakers.
host_breakers = HostBreakers()
