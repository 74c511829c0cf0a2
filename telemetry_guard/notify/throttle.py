"""One mail per fingerprint per window, in Redis; and how many occurrences were suppressed."""

from __future__ import annotations

import redis
from redis.commands.core import Script

from ..stores.redis_client import redis_client
from ..stores.scripts import bind

#: A suppressed count nobody reads (the failure never recurred) expires after a week.
SUPPRESSED_TTL = 7 * 24 * 3600
REDIS_TIMEOUT = 5.0


class NotificationThrottle:
    """One mail per fingerprint per window, and how many occurrences were suppressed."""

    def __init__(self, redis_url: str | None, *, key_prefix: str, window: float) -> None:
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.window_ms = int(window * 1000)

    @property
    def enabled(self) -> bool:
        """Whether there is a Redis to throttle in and a window to throttle over."""
        return self.redis_url is not None and self.window_ms > 0

    @property
    def client(self) -> redis.Redis:
        """This process's Redis client (the factory's: a new one after fork)."""
        assert self.redis_url is not None
        return redis_client(self.redis_url, timeout=REDIS_TIMEOUT, retries=0)

    def slot_key(self, fingerprint: str) -> str:
        return f"{self.key_prefix}notify:throttle:{fingerprint}"

    def suppressed_key(self, fingerprint: str) -> str:
        return f"{self.key_prefix}notify:suppressed:{fingerprint}"

    def acquire(self, fingerprint: str, token: str) -> bool:
        """Take the fingerprint's slot for one window (``SET NX PX``); False if another has it.

        The same ``token`` (the same message, redelivered after a lost worker) gets it again.
        """
        if not self.enabled:
            return True
        return bool(self._script("notify_acquire")(
            keys=[self.slot_key(fingerprint)], args=[token, self.window_ms]))

    def release(self, fingerprint: str, token: str) -> None:
        """Give the slot back, only if ``token`` still holds it (a failed send)."""
        if self.enabled:
            self._script("notify_release")(keys=[self.slot_key(fingerprint)], args=[token])

    def suppress(self, fingerprint: str) -> int:
        """Count one suppressed occurrence; the count since the last mail."""
        if not self.enabled:
            return 0
        key = self.suppressed_key(fingerprint)
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, SUPPRESSED_TTL)
        return int(pipe.execute()[0])

    def pending(self, fingerprint: str) -> int:
        """Occurrences suppressed since the last mail."""
        if not self.enabled:
            return 0
        return int(self.client.get(self.suppressed_key(fingerprint)) or 0)

    def settle(self, fingerprint: str, reported: int) -> None:
        """A mail reported ``reported`` suppressed occurrences: take them off the count."""
        if self.enabled and reported > 0:
            self._script("notify_settle")(keys=[self.suppressed_key(fingerprint)],
                                          args=[reported])

    def _script(self, name: str) -> Script:
        """One of the throttle's scripts, bound to this process's client (EVALSHA)."""
        return bind(self.client, name)
