"""A breaker store in Redis, shared by every process of the fleet.

Keys (``<prefix>`` defaults to ``telemetry_guard:``):

- ``<prefix>breaker:<name>`` hash: ``state``, ``mode``, ``gen``, ``fails``, ``opened_at`` and
  ``ho_since`` (server milliseconds), ``ho_ok`` (half-open successes), ``permit_seq``, and the
  failure-rate window's ``w_pos``, ``w_count``, ``w_fail``;
- ``<prefix>breaker:<name>:permits`` zset: half-open trial permits, score = lease expiry (ms);
- ``<prefix>breaker:<name>:window`` bitmap: the last ``window_size`` outcomes (1 = failure).

Every read-decide-write is one call of one Lua script, on Redis server time; its reply is
one line of space-separated fields. Breakers on the same URL share one client per process
(rebuilt after fork). The process
keeps a cached view (state, generation, mode, when the open period ends): while closed a
call is admitted with no round trip and its outcome is recorded with one; while open and
not due, calls are rejected locally, and the view is refreshed at least every
``REFRESH_INTERVAL`` seconds. When Redis cannot be used the store falls back to a
per-process memory store (``on_redis_error="fail_open"``) or rejects every call
(``"fail_closed"``), says so once in the log and through the error listener, and tries
Redis again every ``STORE_RETRY_INTERVAL`` seconds.
"""

from __future__ import annotations

import math
import os
import threading
from time import monotonic
from typing import Any

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from .hooks import STORE_SINK, report_error
from .memory import MemoryBreakerStore
from .registry import get_default_redis_url
from .state import (
    CLOSED,
    DISABLED,
    FORCED_OPEN,
    METRICS_ONLY,
    MODES,
    NORMAL,
    OPEN,
    PASS_THROUGH,
    STATES,
    Admission,
    BreakerConfig,
    BreakerSnapshot,
    Transition,
)

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

SCRIPT = """
local hkey, pkey, wkey = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
local c = {}
for v in string.gmatch(ARGV[2], '%S+') do c[#c + 1] = tonumber(v) end
local threshold, reset_ms, max_calls, rate = c[1], c[2], c[3], c[4]
local wsize, rate_min, ho_max_ms, ttl_ms = c[5], c[6], c[7], c[8]
local arg_gen = tonumber(ARGV[3])
local arg = ARGV[4]
local permit = ARGV[5]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local f = redis.call('HMGET', hkey, 'state', 'mode', 'gen', 'fails', 'opened_at', 'ho_since',
                     'ho_ok', 'w_pos', 'w_count', 'w_fail')
local state = f[1] or 'closed'
local mode = f[2] or 'normal'
local gen = tonumber(f[3] or 0)
local fails = tonumber(f[4] or 0)
local opened_at = tonumber(f[5] or 0)
local ho_since = tonumber(f[6] or 0)
local ho_ok = tonumber(f[7] or 0)
local w_pos = tonumber(f[8] or 0)
local w_count = tonumber(f[9] or 0)
local w_fail = tonumber(f[10] or 0)
local dirty = false
local changes = {}

local function clear_counts()
  fails = 0
  ho_ok = 0
  redis.call('DEL', pkey)
  if w_count > 0 then redis.call('DEL', wkey) end
  w_pos = 0
  w_count = 0
  w_fail = 0
  dirty = true
end

local function go(to, reason)
  changes[#changes + 1] = state
  changes[#changes + 1] = to
  changes[#changes + 1] = reason
  state = to
  gen = gen + 1
  clear_counts()
  if to == 'open' then opened_at = now elseif to == 'half_open' then ho_since = now end
end

local function tick()
  if mode == 'forced_open' or mode == 'disabled' then return end
  if state == 'open' and now >= opened_at + reset_ms then
    go('half_open', 'reset_timeout_elapsed')
  end
  if state == 'half_open' then
    if now >= ho_since + ho_max_ms then
      go('open', 'half_open_timed_out')
    else
      redis.call('ZREMRANGEBYSCORE', pkey, '-inf', now)
    end
  end
end

local function retry_after()
  if mode == 'forced_open' then return reset_ms end
  if state == 'open' then return math.max(0, opened_at + reset_ms - now) end
  if state == 'half_open' then
    local live = redis.call('ZRANGEBYSCORE', pkey, '(' .. now, '+inf', 'WITHSCORES')
    if #live / 2 + ho_ok >= max_calls then
      local due = ho_since + ho_max_ms
      for i = 2, #live, 2 do due = math.min(due, tonumber(live[i])) end
      return math.max(0, due - now)
    end
  end
  return 0
end

local admitted = 0
local granted = ''
local in_use = 0
if op == 'record' then
  if state ~= 'closed' then tick() end
  if mode ~= 'disabled' and arg_gen == gen then
    if state == 'closed' then
      if arg ~= 'ignored' then
        local bit = 0
        if arg == 'failure' then
          fails = fails + 1
          bit = 1
          dirty = true
        elseif fails > 0 then
          fails = 0
          dirty = true
        end
        if rate >= 0 then
          if w_count >= wsize then
            w_fail = w_fail - redis.call('GETBIT', wkey, w_pos)
          else
            w_count = w_count + 1
          end
          redis.call('SETBIT', wkey, w_pos, bit)
          w_fail = w_fail + bit
          w_pos = (w_pos + 1) % wsize
          dirty = true
        end
        if bit == 1 and fails >= threshold then
          go('open', 'consecutive_failures')
        elseif rate >= 0 and w_count >= rate_min and w_fail >= rate * w_count then
          go('open', 'failure_rate')
        end
      end
    elseif state == 'half_open' and permit ~= '' then
      local held = redis.call('ZREM', pkey, permit)
      if arg == 'failure' then
        go('open', 'half_open_trial_failed')
      elseif arg == 'success' and held == 1 then
        ho_ok = ho_ok + 1
        dirty = true
        if ho_ok >= max_calls then go('closed', 'half_open_trials_succeeded') end
      end
    end
  end
elseif op == 'admit' then
  tick()
  if mode == 'disabled' or (state == 'closed' and mode ~= 'forced_open') then
    admitted = 1
  elseif mode ~= 'forced_open' then
    if state == 'half_open' and redis.call('ZCARD', pkey) + ho_ok < max_calls then
      granted = gen .. ':' .. redis.call('HINCRBY', hkey, 'permit_seq', 1)
      redis.call('ZADD', pkey, now + ttl_ms, granted)
      admitted = 1
    elseif mode == 'metrics_only' then
      admitted = 1
    end
  end
elseif op == 'force_open' then
  if state == 'open' then
    opened_at = now
    dirty = true
  else
    go('open', 'forced')
  end
elseif op == 'reset' then
  if state ~= 'closed' then go('closed', 'reset') else clear_counts() end
elseif op == 'set_mode' then
  mode = arg
  dirty = true
  if arg == 'forced_open' and state ~= 'open' then
    go('open', 'mode_forced_open')
  elseif arg == 'disabled' then
    if state ~= 'closed' then go('closed', 'mode_disabled') else clear_counts() end
  end
elseif op == 'snapshot' then
  if state == 'half_open' then in_use = redis.call('ZCOUNT', pkey, '(' .. now, '+inf') end
end

if dirty then
  redis.call('HSET', hkey, 'state', state, 'mode', mode, 'gen', gen, 'fails', fails,
             'opened_at', opened_at, 'ho_since', ho_since, 'ho_ok', ho_ok,
             'w_pos', w_pos, 'w_count', w_count, 'w_fail', w_fail)
end

if granted == '' then granted = '-' end
local out = {state, gen, mode, retry_after(), granted, admitted, now, fails, w_count, w_fail,
             in_use}
for i = 1, #changes do out[#out + 1] = changes[i] end
return table.concat(out, ' ')
"""

_TEXT = {name.encode(): name for name in (*STATES, *MODES)}
_HEADER = 11


_clients_lock = threading.Lock()
#: One client and script per URL in this process (breakers per host share a pool).
_clients: dict[str, tuple[int, redis.Redis, Any]] = {}


def _shared_client(url: str) -> tuple[redis.Redis, Any]:
    """This process's client for ``url`` and the breaker script bound to it."""
    pid = os.getpid()
    with _clients_lock:
        entry = _clients.get(url)
        if entry is None or entry[0] != pid:
            client = redis.Redis.from_url(
                url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 1, (redis.ConnectionError,)))
            entry = _clients[url] = (pid, client, client.register_script(SCRIPT))
        return entry[1], entry[2]


class StoreUnconfigured(RuntimeError):
    """No Redis URL: none given, and no TelemetryGuard has set the process default yet."""


def _ms(seconds: float | None) -> str:
    return str(max(1, round((seconds or 0.0) * 1000)))


class RedisBreakerStore:
    """One breaker's state in Redis, with a per-process cached view and a memory fallback."""

    def __init__(self, name: str, config: BreakerConfig, *, redis_url: str | None = None,
                 key_prefix: str = "telemetry_guard:", on_redis_error: str = "fail_open") -> None:
        self.name = name
        self.config = config
        self.redis_url = redis_url
        self.fail_closed = on_redis_error == "fail_closed"
        key = f"{key_prefix}breaker:{name}"
        self.keys = (key.encode(), f"{key}:permits".encode(), f"{key}:window".encode())
        rate = config.failure_rate_threshold
        self._config_arg = " ".join((
            str(config.failure_threshold), _ms(config.reset_timeout),
            str(config.half_open_max_calls), repr(rate) if rate is not None else "-1",
            str(config.window_size), str(config.rate_minimum),
            _ms(config.half_open_max_duration), _ms(config.permit_ttl))).encode()
        self._log = structlog.get_logger("telemetry_guard.breaker")
        self.after_fork()

    # -- per-process state -----------------------------------------------------------------

    def after_fork(self) -> None:
        """Forget the client, the cached view and the fallback: this process starts afresh."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._script: Any = None
        self.fallback = MemoryBreakerStore(self.name, self.config)
        #: Monotonic time before which Redis is not tried again; 0.0 while Redis works.
        self.down_until = 0.0
        self._outage_logged = False
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

    def _connect(self) -> Any:
        if self._pid != os.getpid():
            self.after_fork()
        url = self.redis_url or get_default_redis_url()
        if url is None:
            raise StoreUnconfigured(
                f"breaker {self.name!r}: storage='redis' without redis_url, and no "
                "TelemetryGuard has set the default (telemetry_guard.breaker."
                "set_default_redis_url)")
        self._client, self._script = _shared_client(url)
        return self._script

    def _run(self, op: bytes, generation: int = -1, arg: str = "", permit: str = "") -> list[bytes]:
        """Run the script once; its reply is one line of space-separated fields."""
        script = self._script
        if script is None or self._pid != os.getpid():
            script = self._connect()
        reply: bytes = script(keys=self.keys, args=(op, self._config_arg, generation, arg, permit))
        return reply.split()

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
        transitions = self._absorb(reply)
        mode = self._mode
        permit = reply[4]
        return Admission(reply[5] == b"1", self._generation,
                         None if permit == b"-" else permit.decode(), int(reply[3]) / 1000,
                         transitions, mode != DISABLED, ORIGIN)

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
        if self.fail_closed:
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
        """Read the state from Redis (the fallback's while Redis is unusable)."""
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
        count, failures = int(reply[8]), int(reply[9])
        return BreakerSnapshot(
            breaker=self.name, state=self._state, mode=self._mode,
            generation=self._generation, consecutive_failures=int(reply[7]),
            failure_rate=failures / count if count else None, retry_after=int(reply[3]) / 1000,
            half_open_permits_in_use=int(reply[10]))

    # -- the cached view -----------------------------------------------------------------

    def _absorb(self, reply: list[bytes]) -> tuple[Transition, ...]:
        """Take the state a script returned as this process's view; return its transitions."""
        state = _TEXT[reply[0]]
        generation = int(reply[1])
        mode = _TEXT[reply[2]]
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
            retry_after = int(reply[3]) / 1000
            self._retry_at = now + retry_after
            self._recheck_at = now + (retry_after if state == OPEN
                                      else min(retry_after, HALF_OPEN_POLL))
        if len(reply) == _HEADER:
            return ()
        at = int(reply[6]) / 1000
        return tuple(Transition(_TEXT[reply[i]], _TEXT[reply[i + 1]], reply[i + 2].decode(), at)
                     for i in range(_HEADER, len(reply), 3))

    # -- outages ---------------------------------------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        """Redis could not be used: stop trying for a while, say so once per outage."""
        with self._lock:
            self.down_until = monotonic() + STORE_RETRY_INTERVAL
            self.fast_admission = None
            first = not self._outage_logged
            self._outage_logged = True
        if first:
            try:
                self._log.warning(
                    "breaker.store_unavailable", breaker=self.name,
                    error=f"{type(exc).__name__}: {exc}",
                    fallback="reject" if self.fail_closed else "memory")
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
