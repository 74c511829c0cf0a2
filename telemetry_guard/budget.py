"""A fleet-wide retry budget: retries allowed only while they stay a fraction of first attempts.

After the Google SRE book ("Handling Overload"), Finagle's ``RetryBudget`` and Envoy's
``retry_budget``. Every worker of the fleet shares one token bucket in Redis per *scope* (a
task name or a breaker name), so a failing dependency sees at most about ``ratio`` extra
calls per first attempt, however many workers retry it. Off by default.

The bucket is the hash ``<prefix>retry_budget:<scope>`` (``<prefix>`` defaults to
``telemetry_guard:``) with three fields:

- ``tokens``: the deposits' balance. Each first attempt deposits ``ratio`` tokens. The balance
  decays exponentially with time constant ``ttl`` seconds (``tokens *= exp(-elapsed / ttl)``),
  so a deposit counts for about ``ttl`` seconds and a long healthy period cannot bank an
  unbounded retry storm: at a steady ``r`` first attempts per second the balance stays below
  about ``ratio * r * ttl``.
- ``reserve``: refills at ``min_retries_per_second`` up to a cap of ``min_retries_per_second``
  tokens (one second's worth), so a scope with little traffic may still retry a little. A new
  scope starts with a full reserve.
- ``ts``: Redis server time (``TIME``, seconds) of the last update, from which the next call
  applies decay and refill.

A bucket holding anything else (``nan``, ``inf``, a negative number, text, a key that is not a
hash) starts afresh like a new scope: garbage never raises and never blocks retries for good.

A retry (``withdraw``) takes one token from the reserve when it holds at least one, else one
from the deposits; it is refused when both hold less than one. Every update sets an expiry of
``EXPIRE_TTLS * ttl`` on the key, so idle scopes vanish. The arithmetic is one Lua script
(``SCRIPT``), one atomic call per decision on Redis server time; ``advance`` is the same
arithmetic as a pure function, for tests.

``deposit`` runs at every task start, so it only increments a per-process counter under a
lock (no I/O); a background thread writes the accumulated deposits of every scope every
``flush_interval`` seconds in one pipelined round trip. ``withdraw`` makes one round trip and
hands over this process's pending deposits for the scope in the same script call, so the
deposit of the attempt that is asking to retry counts. The per-process state (lock, counters,
thread, client) is rebuilt in a forked child. The budget fails open: while Redis cannot be
used, ``withdraw`` answers True (asking Redis again after ``RETRY_REDIS_AFTER`` seconds),
deposits that could not be written are dropped (an outage must not bank retries for later),
and each failure is reported as ``("retry_budget", exc)``.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from time import monotonic
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from .sinks.base import Sink

ErrorReporter = Callable[[str, "BaseException | None"], None]

DEFAULT_RATIO = 0.2
DEFAULT_MIN_RETRIES_PER_SECOND = 3.0
DEFAULT_TTL = 10.0

#: The name failures are reported under.
SINK = "retry_budget"
#: A key's expiry, in multiples of ``ttl``: by then its deposits have decayed to nothing.
EXPIRE_TTLS = 10
#: After Redis failed, ``withdraw`` answers True without asking it for this many seconds.
RETRY_REDIS_AFTER = 1.0
#: The longest the flusher waits before writing again after Redis failed, in seconds.
MAX_BACKOFF = 5.0
#: Seconds an exiting process waits for its pending deposits to reach Redis.
EXIT_FLUSH_TIMEOUT = 2.0
#: Connect and read timeout of the budget's Redis client, in seconds.
SOCKET_TIMEOUT = 1.0

SCRIPT = """
local key = KEYS[1]
local ratio, min_rps, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local expire_ms = tonumber(ARGV[4])
local deposits, wants = tonumber(ARGV[5]), ARGV[6] == '1'

local t = redis.call('TIME')
local now_text = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local now = tonumber(now_text)

-- A bucket that is missing, not a hash, or holds anything but finite non-negative numbers
-- (nan, inf, text) starts afresh, as a new scope does.
local f = redis.pcall('HMGET', key, 'tokens', 'reserve', 'ts')
if f.err then
  redis.call('DEL', key)
  f = {}
end
local tokens, reserve, ts = tonumber(f[1]), tonumber(f[2]), tonumber(f[3])
local function usable(x) return x ~= nil and x >= 0 and x < math.huge end
if not (usable(tokens) and usable(reserve) and usable(ts)) then
  tokens, reserve, ts = 0, min_rps, now
end

local elapsed = math.max(0, now - ts)
tokens = tokens * math.exp(-elapsed / ttl) + deposits * ratio
reserve = math.min(min_rps, reserve + elapsed * min_rps)

local granted = 0
if wants then
  if reserve >= 1 then
    reserve = reserve - 1
    granted = 1
  elseif tokens >= 1 then
    tokens = tokens - 1
    granted = 1
  end
end

redis.call('HSET', key, 'tokens', string.format('%.17g', tokens),
           'reserve', string.format('%.17g', reserve), 'ts', now_text)
redis.call('PEXPIRE', key, expire_ms)
return granted
"""


def _number(field: str, value: object, *, low: float, low_inclusive: bool,
            high: float = math.inf) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and math.isfinite(value) and (value >= low if low_inclusive else value > low)
          and value <= high)
    if not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low:g}"
        if high != math.inf:
            bound += f" and <= {high:g}"
        raise ValueError(f"BudgetConfig.{field} must be a finite number {bound}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class BudgetConfig:
    """A retry budget's settings, validated; a bad value raises ValueError naming the field."""

    #: Tokens one first attempt deposits: retries allowed per first attempt, 0 < ratio <= 1.
    ratio: float = DEFAULT_RATIO
    #: Refill rate and cap of the reserve, which allows a few retries at low traffic; >= 0.
    min_retries_per_second: float = DEFAULT_MIN_RETRIES_PER_SECOND
    #: Time constant of the deposits' decay, in seconds; > 0.
    ttl: float = DEFAULT_TTL

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "ratio", _number("ratio", self.ratio, low=0.0, low_inclusive=False, high=1.0))
        set_(self, "min_retries_per_second",
             _number("min_retries_per_second", self.min_retries_per_second,
                     low=0.0, low_inclusive=True))
        set_(self, "ttl", _number("ttl", self.ttl, low=0.0, low_inclusive=False))

    @classmethod
    def from_setting(cls, value: object) -> BudgetConfig | None:
        """None/False → None (off); True → defaults; a dict of the fields → that; else ValueError.

        A BudgetConfig is taken as it is.
        """
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, BudgetConfig):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(str(name) for name in value if name not in known)
            if unknown:
                raise ValueError(f"retry budget: unknown field(s) {', '.join(unknown)}; "
                                 f"expected some of {', '.join(sorted(known))}")
            return cls(**value)
        names = ", ".join(f.name for f in fields(cls))
        raise ValueError(
            f"retry budget must be None, False, True or a dict of {names}, got {value!r}")


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One scope's bucket: the deposits' balance, the reserve, and when they were computed."""

    tokens: float
    reserve: float
    at: float


def advance(state: BudgetState | None, config: BudgetConfig, now: float, *,
            deposits: int = 0, withdraw: bool = False) -> tuple[bool, BudgetState]:
    """The script's arithmetic: decay and refill up to ``now``, add deposits, maybe withdraw.

    ``state`` None is a new scope; so is a state holding anything but finite numbers >= 0
    (nan, inf, a negative balance). Returns whether a retry was granted (always False without
    ``withdraw``) and the new state. Times are seconds on any clock that does not go back;
    when it does, no time is taken to have passed.
    """
    cap = config.min_retries_per_second
    if state is None or not all(0.0 <= value < math.inf
                                for value in (state.tokens, state.reserve, state.at)):
        state = BudgetState(0.0, cap, now)
    elapsed = max(0.0, now - state.at)
    tokens = state.tokens * math.exp(-elapsed / config.ttl) + deposits * config.ratio
    reserve = min(cap, state.reserve + elapsed * cap)
    granted = False
    if withdraw:
        if reserve >= 1:
            reserve -= 1
            granted = True
        elif tokens >= 1:
            tokens -= 1
            granted = True
    return granted, BudgetState(tokens, reserve, now)


class RetryBudget:
    """A scope's retries allowed only under ``ratio`` of its first attempts, fleet-wide."""

    _atexit_registered = False

    def __init__(self, redis_url: str, config: BudgetConfig, *,
                 key_prefix: str = "telemetry_guard:", flush_interval: float = 0.25,
                 report_error: ErrorReporter | None = None) -> None:
        self.redis_url = redis_url
        self.config = config
        self.key_prefix = key_prefix
        self.flush_interval = flush_interval
        self._key_base = f"{key_prefix}retry_budget:"
        self._args = (repr(config.ratio), repr(config.min_retries_per_second),
                      repr(config.ttl), str(max(1, round(EXPIRE_TTLS * config.ttl * 1000))))
        self._report_error = report_error or (lambda sink, exc: None)
        self._start_process()

    def _start_process(self) -> None:
        """(Re)create the per-process state: lock, counters, thread, client; after fork too."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        #: Deposits not yet written, per scope; guarded by ``_lock``.
        self._pending: dict[str, int] = {}
        self._cond = threading.Condition(threading.Lock())
        self._in_flight = False
        self._flushers = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._redis: tuple[redis.Redis, Any] | None = None
        #: Monotonic time before which ``withdraw`` does not ask Redis; 0.0 while Redis works.
        self._down_until = 0.0

    # -- the task's side -------------------------------------------------------------------

    def deposit(self, scope: str) -> None:
        """Count one first attempt of ``scope``: a counter increment, written later."""
        if self._pid != os.getpid():
            self._start_process()
        with self._lock:
            pending = self._pending
            first = not pending
            pending[scope] = pending.get(scope, 0) + 1
        if first:
            self._wake()

    def withdraw(self, scope: str) -> bool:
        """May one retry of ``scope`` happen now? One script call; True while Redis is down."""
        if self._pid != os.getpid():
            self._start_process()
        if self._down_until:
            if monotonic() < self._down_until:
                return True
        with self._lock:
            deposits = self._pending.pop(scope, 0)
        try:
            script = (self._redis or self._connect())[1]
            granted = script(keys=(self._key_base + scope,), args=(*self._args, deposits, 1))
        except Exception as exc:
            self._failed(exc)
            self._down_until = monotonic() + RETRY_REDIS_AFTER
            return True
        self._down_until = 0.0
        return bool(granted == 1)

    # -- the background writer -------------------------------------------------------------

    def _wake(self) -> None:
        """Tell the writer there is something to write; start it on first use."""
        if self._thread is None:
            with self._cond:
                if self._thread is None:
                    thread = threading.Thread(
                        target=self._run, name="telemetry_guard-retry-budget", daemon=True)
                    try:
                        thread.start()
                    except RuntimeError as exc:  # e.g. at interpreter shutdown
                        self._failed(exc)
                        return
                    self._thread = thread
            if not self._atexit_registered:
                self._atexit_registered = True
                atexit.register(self.flush, EXIT_FLUSH_TIMEOUT)
            return
        with self._cond:
            self._cond.notify()

    def _run(self) -> None:
        backoff = self.flush_interval
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                self._wait(self.flush_interval)  # let deposits accumulate into one batch
                with self._lock:
                    batch, self._pending = self._pending, {}
                if not batch:
                    if self._closed:
                        return
                    continue
                self._in_flight = True
            try:
                self._write(batch)
                backoff = self.flush_interval
                failed = False
            except Exception as exc:  # Redis unusable: drop the batch, wait, try later
                self._failed(exc)
                failed = True
            with self._cond:
                self._in_flight = False
                self._cond.notify_all()
                if failed:
                    self._wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)

    def _wait(self, seconds: float) -> None:
        """Wait (holding ``_cond``) for ``seconds``, or less when flushed or closed."""
        deadline = monotonic() + seconds
        while not (self._closed or self._flushers):
            remaining = deadline - monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _write(self, batch: dict[str, int]) -> None:
        """All scopes' deposits in one pipelined round trip (no withdrawal)."""
        client, script = self._redis or self._connect()
        for _ in range(2):
            pipe = client.pipeline(transaction=False)
            for scope, deposits in batch.items():
                pipe.evalsha(script.sha, 1, self._key_base + scope, *self._args, deposits, 0)
            try:
                pipe.execute()
                return
            except NoScriptError:  # a restarted or flushed server: load the script, once
                script.sha = client.script_load(SCRIPT)
        raise NoScriptError("retry budget script still unknown after SCRIPT LOAD")

    def _connect(self) -> tuple[redis.Redis, Any]:
        client = redis.Redis.from_url(
            self.redis_url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 1, (redis.ConnectionError,)))
        entry = self._redis = (client, client.register_script(SCRIPT))
        return entry

    def _failed(self, exc: BaseException) -> None:
        """Redis could not be used: forget the client and report, never raising."""
        self._redis = None
        try:
            self._report_error(SINK, exc)
        except Exception:
            pass

    # -- lifecycle -------------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> None:
        """Write this process's pending deposits now; wait at most ``timeout`` seconds."""
        if self._pid != os.getpid():
            self._start_process()
            return
        deadline = monotonic() + timeout
        with self._cond:
            self._flushers += 1
            self._cond.notify_all()
            try:
                while (self._pending or self._in_flight) and self._thread is not None \
                        and self._thread.is_alive():
                    remaining = deadline - monotonic()
                    if remaining <= 0:
                        return
                    self._cond.wait(remaining)
            finally:
                self._flushers -= 1

    def after_fork(self) -> None:
        """Start afresh in a forked child: new lock, counters, thread and client."""
        self._start_process()

    def close(self) -> None:
        """Write the pending deposits, stop the writer and drop the client."""
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        entry, self._redis = self._redis, None
        if entry is not None:
            try:
                entry[0].close()
            except Exception:
                pass


class BudgetLifecycle(Sink):
    """Gives the retry budget the sinks' lifecycle: re-created after fork, flushed, closed."""

    name = "retry_budget"

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget

    def after_fork(self) -> None:
        self.budget.after_fork()

    def flush(self, timeout: float = 5.0) -> None:
        self.budget.flush(timeout)

    def close(self) -> None:
        self.budget.close()
