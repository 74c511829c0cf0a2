"""A breaker store in Redis, shared by every process of the fleet.

Every read-decide-write is one call of one Lua script (``stores/lua/breaker.lua``, run by
``EVALSHA``) on Redis server time; its reply is decoded by ``redis_script.parse_reply``. The
keys and the values a breaker may store are described in ``redis_hash``. Breakers on the same
URL share one client per process (rebuilt after fork). The process keeps a cached view
(state, generation, mode, when the open period ends): while closed a call is admitted with no
round trip and its outcome is recorded with one; while open and not due, calls are rejected
locally, and the view is refreshed at least every ``REFRESH_INTERVAL`` seconds. When Redis
cannot be used the store falls back to a per-process memory store
(``on_redis_error="fail_open"``) or rejects every call (``"fail_closed"``), says so once in
the log and through the error listener, and tries Redis again every ``STORE_RETRY_INTERVAL``
seconds.

A hash holding values no breaker writes is treated like an outage: the script answers
``invalid <fields>`` without writing, the store raises ``InvalidBreakerState`` internally,
falls back, logs ``breaker.store_invalid`` once and reports every retry. The commands
``reset``, ``force_open`` and ``set_mode`` rewrite such a hash. A failure-rate window written
under another ``window_size`` keeps its newest outcomes.
"""

from __future__ import annotations

import math
import os
import threading
from time import monotonic
from typing import TYPE_CHECKING

import structlog

from ..stores.redis_client import redis_client
from ..stores.scripts import bind
from .default_url import get_default_redis_url
from .hooks import STORE_SINK, report_error
from .memory import MemoryBreakerStore
from .redis_hash import InvalidBreakerState, breaker_keys
from .redis_script import SCRIPT_NAME, ScriptReply, parse_reply, script_config
from .state import (
    CLOSED,
    DISABLED,
    FORCED_OPEN,
    METRICS_ONLY,
    MODES,
    NORMAL,
    OPEN,
    PASS_THROUGH,
    Admission,
    BreakerConfig,
    BreakerSnapshot,
    Transition,
)

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

#: A rejecting (open) view is re-read from Redis at least this often, in seconds.
REFRESH_INTERVAL = 1.0
#: How long a closed view from Redis admits calls without asking again.
CLOSED_TRUST_INTERVAL = 0.25
#: While half-open with every permit taken, ask Redis again after at most this long.
HALF_OPEN_POLL = 0.05
#: After Redis failed, try it again at most this often, in seconds.
STORE_RETRY_INTERVAL = 2.0
#: Connect and read timeout of the breaker's Redis client, in seconds.
SOCKET_TIMEOUT = 1.0

ORIGIN = "redis"


class StoreUnconfigured(RuntimeError):
    """No Redis URL: none given, and no TelemetryGuard has set the process default yet."""


def breaker_client(url: str) -> redis.Redis:
    """This process's client for breakers on ``url``: one retry on a dropped connection."""
    return redis_client(url, timeout=SOCKET_TIMEOUT, retries=1)


class RedisBreakerStore:
    """One breaker's state in Redis, with a per-process cached view and a memory fallback."""

    def __init__(self, name: str, config: BreakerConfig, *, redis_url: str | None = None,
                 key_prefix: str = "telemetry_guard:", on_redis_error: str = "fail_open") -> None:
        self.name = name
        self.config = config
        self.redis_url = redis_url
        self.fail_closed = on_redis_error == "fail_closed"
        self.keys = breaker_keys(key_prefix, name)
        self._config_arg = script_config(config)
        self._log = structlog.get_logger("telemetry_guard.breaker")
        self.after_fork()

    # -- per-process state -----------------------------------------------------------------

    def after_fork(self) -> None:
        """Forget the client, the cached view and the fallback: this process starts afresh."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._script: Script | None = None
        self.fallback = MemoryBreakerStore(self.name, self.config)
        #: Monotonic time before which Redis is not tried again; 0.0 while Redis works.
        self.down_until = 0.0
        self._outage_logged = False
        #: The last failure was garbage in the hash (not an outage): calls run even fail-closed.
        self._garbled = False
        self.fast_admission: Admission | None = None
        self._state = CLOSED
        self._mode = NORMAL
        self._generation = -1
        self._checked_at = -math.inf
        #: Monotonic time from which the store said a call could be admitted again.
        self._retry_at = 0.0
        #: Monotonic time after which a rejecting view must be checked with Redis.
        self._recheck_at = 0.0

    def disconnect(self) -> None:
        """Drop the client (for a new URL); the next call reconnects, even during an outage."""
        self._client = self._script = None
        self.fast_admission = None
        self._checked_at = -math.inf
        if self.down_until:
            self.down_until = 1e-9  # due: the next call tries Redis, then logs the recovery

    @property
    def url(self) -> str | None:
        """The Redis URL this store uses now (its own, else the process default)."""
        return self.redis_url or get_default_redis_url()

    def _connect(self) -> Script:
        if self._pid != os.getpid():
            self.after_fork()
        url = self.url
        if url is None:
            raise StoreUnconfigured(
                f"breaker {self.name!r}: storage='redis' without redis_url, and no "
                "TelemetryGuard has set the default (telemetry_guard.breaker."
                "set_default_redis_url)")
        client = self._client = breaker_client(url)
        script = self._script = bind(client, SCRIPT_NAME)
        return script

    def _run(self, op: bytes, generation: int = -1, arg: str = "",
             permit: str = "") -> ScriptReply:
        """Run the script once and read its reply (InvalidBreakerState: garbage stored)."""
        script = self._script
        if script is None or self._pid != os.getpid():
            script = self._connect()
        reply: bytes = script(keys=self.keys, args=(op, self._config_arg, generation, arg, permit))
        return parse_reply(self.name, reply)

    # -- calls ---------------------------------------------------------------------------

    def admit(self) -> Admission:
        """Decide whether a call may run: locally when the cached view allows, else one script."""
        fast = self.fast_admission
        now = monotonic()
        # A closed view is trusted for CLOSED_TRUST_INTERVAL after Redis last answered: a
        # busy worker keeps it fresh with its outcome scripts (one round trip per call); an
        # idle one asks again, so a breaker opened meanwhile rejects its very next call.
        if fast is not None and now - self._checked_at < CLOSED_TRUST_INTERVAL:
            return fast
        if self.down_until:
            if now < self.down_until:
                return self._admit_while_down(now)
        elif now - self._checked_at < REFRESH_INTERVAL:
            local = self._admit_locally(now)
            if local is not None:
                return local
        try:
            reply = self._run(b"admit")
        except Exception as exc:
            self._failed(exc)
            return self._admit_while_down(monotonic())
        if self.down_until:
            self._recovered()
        self._absorb(reply)
        return Admission(reply.admitted, reply.generation, reply.permit, reply.retry_after,
                         reply.transitions, reply.mode != DISABLED, ORIGIN)

    def _admit_locally(self, now: float) -> Admission | None:
        """Answer from the cached view, or None when Redis must be asked."""
        mode = self._mode
        if mode == DISABLED:
            return PASS_THROUGH
        generation = self._generation
        if mode == FORCED_OPEN:
            return Admission(False, generation, retry_after=self.config.reset_timeout,
                             origin=ORIGIN)
        if self._state == CLOSED or now >= self._recheck_at:
            return None
        if mode == METRICS_ONLY:
            return Admission(True, generation, origin=ORIGIN)
        return Admission(False, generation, retry_after=max(0.0, self._retry_at - now),
                         origin=ORIGIN)

    def _admit_while_down(self, now: float) -> Admission:
        if self.fail_closed and not self._garbled:  # garbage is no outage: the call runs
            return Admission(False, -1, retry_after=max(0.0, self.down_until - now),
                             origin=ORIGIN)
        return self.fallback.admit()

    def record(self, admission: Admission, outcome: str) -> tuple[Transition, ...]:
        """Record a call's outcome with one script call; refresh the cached view from its reply."""
        if not admission.record:
            return ()
        if admission.origin != ORIGIN:
            return self.fallback.record(admission, outcome)
        if self.down_until:
            return ()
        try:
            reply = self._run(b"record", admission.generation, outcome, admission.permit or "")
        except Exception as exc:
            self._failed(exc)
            return ()
        return self._absorb(reply)

    # -- operator commands -----------------------------------------------------------------

    def force_open(self) -> tuple[Transition, ...]:
        """Open the breaker fleet-wide."""
        return self._command(b"force_open")

    def reset(self) -> tuple[Transition, ...]:
        """Close the breaker fleet-wide and clear its counters."""
        return self._command(b"reset")

    def set_mode(self, mode: str) -> tuple[Transition, ...]:
        """Switch the breaker's mode fleet-wide."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        return self._command(b"set_mode", mode)

    def _command(self, op: bytes, arg: str = "") -> tuple[Transition, ...]:
        """Run a command in Redis; while Redis is unusable, on the per-process fallback."""
        try:
            reply = self._run(op, arg=arg)
        except Exception as exc:
            self._failed(exc)
            fallback = self.fallback
            return fallback.set_mode(arg) if op == b"set_mode" else getattr(fallback, op.decode())()
        if self.down_until:
            self._recovered()
        return self._absorb(reply)

    def snapshot(self) -> BreakerSnapshot:
        """Read the state from Redis (the fallback's while Redis is unusable or invalid)."""
        if self.down_until and monotonic() < self.down_until:
            return self.fallback.snapshot()
        try:
            reply = self._run(b"snapshot")
        except Exception as exc:
            self._failed(exc)
            return self.fallback.snapshot()
        if self.down_until:
            self._recovered()
        self._absorb(reply)
        count = reply.window_count
        return BreakerSnapshot(
            breaker=self.name, state=reply.state, mode=reply.mode,
            generation=reply.generation, consecutive_failures=reply.consecutive_failures,
            failure_rate=reply.window_failures / count if count else None,
            retry_after=reply.retry_after, half_open_permits_in_use=reply.permits_in_use)

    def local_state(self) -> str:
        """The state this process last saw, with no I/O (the fallback's while Redis is unusable)."""
        if self.down_until:
            return self.fallback.machine.state
        return self._state

    # -- the cached view -----------------------------------------------------------------

    def _absorb(self, reply: ScriptReply) -> tuple[Transition, ...]:
        """Take the state a script returned as this process's view; return its transitions."""
        state, generation, mode = reply.state, reply.generation, reply.mode
        now = monotonic()
        self._state, self._generation, self._mode, self._checked_at = (
            state, generation, mode, now)
        if state == CLOSED:
            fast = self.fast_admission
            if mode == NORMAL or mode == METRICS_ONLY:
                if fast is None or fast.generation != generation:
                    self.fast_admission = Admission(True, generation, origin=ORIGIN)
            elif fast is not None:
                self.fast_admission = None
        else:
            self.fast_admission = None
            retry_after = reply.retry_after
            self._retry_at = now + retry_after
            self._recheck_at = now + (retry_after if state == OPEN
                                      else min(retry_after, HALF_OPEN_POLL))
        return reply.transitions

    # -- outages ---------------------------------------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        """Redis could not be used (or holds garbage): stop trying for a while, say so once."""
        with self._lock:
            self.down_until = monotonic() + STORE_RETRY_INTERVAL
            self.fast_admission = None
            self._garbled = isinstance(exc, InvalidBreakerState)
            first = not self._outage_logged
            self._outage_logged = True
        if first:
            fallback = "reject" if self.fail_closed and not self._garbled else "memory"
            try:
                if isinstance(exc, InvalidBreakerState):
                    self._log.error(
                        "breaker.store_invalid", breaker=self.name, fields=list(exc.fields),
                        fallback=fallback,
                        repair=f"telemetry-guard breakers reset {self.name}")
                else:
                    self._log.warning(
                        "breaker.store_unavailable", breaker=self.name,
                        error=f"{type(exc).__name__}: {exc}", fallback=fallback)
            except Exception:
                pass
        report_error(STORE_SINK, exc)

    def _recovered(self) -> None:
        """Redis answered again: use it, and start a fresh fallback for the next outage."""
        with self._lock:
            if not self.down_until:
                return
            self.down_until = 0.0
            self._outage_logged = False
            self.fallback = MemoryBreakerStore(self.name, self.config)
        try:
            self._log.info("breaker.store_recovered", breaker=self.name)
        except Exception:
            pass
