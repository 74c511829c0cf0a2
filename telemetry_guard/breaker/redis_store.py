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

A hash holding values no breaker writes (an unknown state or mode; a count or moment that is
not a plain integer, such as ``nan``, ``inf``, ``1e300`` or text; a moment far ahead of Redis'
clock; window counters that contradict each other) is treated like an outage: the script
answers ``invalid <fields>`` without writing, the store raises ``InvalidBreakerState``
internally, falls back, logs ``breaker.store_invalid`` once and reports every retry. The
commands ``reset``, ``force_open`` and ``set_mode`` rewrite such a hash (``stored_problems``
is the same check in Python, for the CLI). A failure-rate window written under another
``window_size`` keeps its newest outcomes.

Every key of a breaker in mode ``normal`` expires ``key_ttl(config)`` after its last write
(at least a day); a breaker with nothing to remember (closed, no failures) simply vanishes.
A mode an operator set (``disabled``, ``forced_open``, ``metrics_only``) never expires.
``read_states`` reads the state of many breakers in one pipelined round trip (one HMGET per
breaker, no script) for the state gauge.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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

#: A stored moment (``opened_at``, ``ho_since``) later than Redis' clock by more than this
#: (milliseconds) is garbage, not clock skew.
CLOCK_SLACK_MS = 60_000
#: The largest failure-rate window a stored hash may claim (Redis' largest bit offset + 1).
MAX_WINDOW = 2**32
#: Every key of a breaker in mode ``normal`` expires this long after its last write, at least
#: (seconds): a closed breaker with nothing to remember simply vanishes.
KEY_TTL_MIN = 86_400.0
#: ... and at least this many times the breaker's longest timeout.
KEY_TTL_TIMEOUTS = 10

#: The hash's fields, in the order the script and ``stored_problems`` read them.
FIELDS = ("state", "mode", "gen", "fails", "opened_at", "ho_since", "ho_ok", "w_pos", "w_count",
          "w_fail", "permit_seq")

_SCRIPT = """
local hkey, pkey, wkey = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
local c = {}
for v in string.gmatch(ARGV[2], '%S+') do c[#c + 1] = tonumber(v) end
local threshold, reset_ms, max_calls, rate = c[1], c[2], c[3], c[4]
local wsize, rate_min, ho_max_ms, ttl_ms = c[5], c[6], c[7], c[8]
local key_ttl_ms = c[9]
local arg_gen = tonumber(ARGV[3])
local arg = ARGV[4]
local permit = ARGV[5]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Every field is checked: a value this script never writes makes the breaker invalid. Calls
-- and outcomes then get the reply "invalid <fields>" and nothing is written (the caller
-- falls back); the commands reset, force_open and set_mode repair it first.
local f = redis.pcall('HMGET', hkey, 'state', 'mode', 'gen', 'fails', 'opened_at',
                      'ho_since', 'ho_ok', 'w_pos', 'w_count', 'w_fail', 'permit_seq')
local bad = {}
if f.err then
  bad[1] = 'type'
  f = {}
end
local function count(i, name)
  local v = f[i]
  if not v then return 0 end
  if #v > 14 or not string.find(v, '^%d+$') then
    bad[#bad + 1] = name
    return 0
  end
  return tonumber(v)
end
local function moment(i, name)
  local v = count(i, name)
  if v > now + CLOCK_SLACK_MS then
    bad[#bad + 1] = name
    return 0
  end
  return v
end
local state = f[1] or 'closed'
if state ~= 'closed' and state ~= 'open' and state ~= 'half_open' then
  bad[#bad + 1] = 'state'
  state = 'closed'
end
local mode = f[2] or 'normal'
if mode ~= 'normal' and mode ~= 'disabled' and mode ~= 'forced_open'
    and mode ~= 'metrics_only' then
  bad[#bad + 1] = 'mode'
  mode = 'normal'
end
local gen = count(3, 'gen')
local fails = count(4, 'fails')
local opened_at = moment(5, 'opened_at')
local ho_since = moment(6, 'ho_since')
local ho_ok = count(7, 'ho_ok')
local w_pos = count(8, 'w_pos')
local w_count = count(9, 'w_count')
local w_fail = count(10, 'w_fail')
count(11, 'permit_seq')
if w_count > MAX_WINDOW then
  bad[#bad + 1] = 'w_count'
elseif w_pos > w_count then
  bad[#bad + 1] = 'w_pos'
elseif w_fail > w_count then
  bad[#bad + 1] = 'w_fail'
end

local dirty = false
local changes = {}

if #bad > 0 then
  if op ~= 'reset' and op ~= 'force_open' and op ~= 'set_mode' then
    return 'invalid ' .. table.concat(bad, ' ')
  end
  -- repair: keep the fields that could be read, start every counter afresh
  redis.call('DEL', hkey, pkey, wkey)
  gen = gen + 1
  fails, ho_ok, w_pos, w_count, w_fail = 0, 0, 0, 0, 0
  if opened_at == 0 then opened_at = now end
  if ho_since == 0 then ho_since = now end
  dirty = true
end

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

-- A window written under another window_size: keep its newest outcomes, oldest first at 0.
local function fit_window()
  if w_pos < wsize and (w_count == wsize or (w_count < wsize and w_pos == w_count)) then
    return
  end
  local n = w_count
  local keep = math.min(n, wsize)
  local start = w_pos % n
  local bits = {}
  for k = n - keep, n - 1 do bits[#bits + 1] = redis.call('GETBIT', wkey, (start + k) % n) end
  redis.call('DEL', wkey)
  w_fail = 0
  for i = 1, #bits do
    if bits[i] == 1 then
      redis.call('SETBIT', wkey, i - 1, 1)
      w_fail = w_fail + 1
    end
  end
  w_count = keep
  w_pos = keep % wsize
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
          if w_count > 0 then fit_window() end
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
  redis.call('DEL', wkey)  -- whatever it holds: a reset is the operator's repair
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
-- In mode normal every key expires key_ttl_ms after its last write (a key written before
-- expiries existed gets one too); a mode an operator set stays until changed.
if mode == 'normal' then
  if dirty or granted ~= '' or redis.call('PTTL', hkey) == -1 then
    redis.call('PEXPIRE', hkey, key_ttl_ms)
    redis.call('PEXPIRE', pkey, key_ttl_ms)
    redis.call('PEXPIRE', wkey, key_ttl_ms)
  end
elseif dirty then
  redis.call('PERSIST', hkey)
  redis.call('PERSIST', pkey)
  redis.call('PERSIST', wkey)
end

if granted == '' then granted = '-' end
local out = {state, gen, mode, retry_after(), granted, admitted, now, fails, w_count, w_fail,
             in_use}
for i = 1, #changes do out[#out + 1] = changes[i] end
return table.concat(out, ' ')
"""
SCRIPT = (_SCRIPT.replace("CLOCK_SLACK_MS", str(CLOCK_SLACK_MS))
          .replace("MAX_WINDOW", str(MAX_WINDOW)))

_TEXT = {name.encode(): name for name in (*STATES, *MODES)}
_HEADER = 11
_INVALID = b"invalid"
#: A count or moment as the script writes it: at most 14 digits, which Lua prints exactly.
_DIGITS = re.compile(rb"[0-9]{1,14}")


class InvalidBreakerState(ValueError):
    """The breaker's hash in Redis holds values no breaker writes; ``fields`` names them.

    Calls fall back as during a Redis outage; ``reset``, ``force_open`` and ``set_mode``
    (``breakers reset NAME``) rewrite the hash.
    """

    def __init__(self, breaker: str, fields: tuple[str, ...]) -> None:
        super().__init__(f"breaker {breaker!r}: invalid stored field(s) {', '.join(fields)}")
        self.breaker = breaker
        self.fields = fields


@dataclass(frozen=True, slots=True)
class ScriptReply:
    """The script's answer: the breaker after the operation, and the transitions it made."""

    state: str
    generation: int
    mode: str
    retry_after: float
    permit: str | None
    admitted: bool
    transitions: tuple[Transition, ...]
    consecutive_failures: int
    window_count: int
    window_failures: int
    permits_in_use: int


def parse_reply(breaker: str, raw: bytes) -> ScriptReply:
    """The script's one-line reply as a ScriptReply; InvalidBreakerState or ValueError if bad."""
    parts = raw.split()
    if parts and parts[0] == _INVALID:
        raise InvalidBreakerState(breaker, tuple(p.decode("ascii", "replace") for p in parts[1:]))
    if len(parts) < _HEADER or (len(parts) - _HEADER) % 3:
        raise ValueError(f"breaker {breaker!r}: unexpected script reply of {len(parts)} fields")
    try:
        state, mode = _TEXT[parts[0]], _TEXT[parts[2]]
        at = int(parts[6]) / 1000
        transitions = tuple(
            Transition(_TEXT[parts[i]], _TEXT[parts[i + 1]], parts[i + 2].decode(), at)
            for i in range(_HEADER, len(parts), 3))
    except KeyError as exc:
        raise ValueError(f"breaker {breaker!r}: unknown state or mode {exc}") from None
    permit = parts[4]
    return ScriptReply(
        state=state, generation=int(parts[1]), mode=mode, retry_after=int(parts[3]) / 1000,
        permit=None if permit == b"-" else permit.decode(), admitted=parts[5] == b"1",
        transitions=transitions, consecutive_failures=int(parts[7]),
        window_count=int(parts[8]), window_failures=int(parts[9]),
        permits_in_use=int(parts[10]))


def stored_problems(fields: Mapping[str, bytes | None], now_ms: int) -> tuple[str, ...]:
    """The fields of a stored breaker hash that the script would call invalid, in its order.

    ``fields`` maps names of ``FIELDS`` to their raw values (absent or None: not stored);
    ``now_ms`` is Redis' clock in milliseconds. The same rules as the script's.
    """
    bad: list[str] = []

    def count(name: str) -> int:
        value = fields.get(name)
        if value is None:
            return 0
        if not _DIGITS.fullmatch(value):
            bad.append(name)
            return 0
        return int(value)

    def moment(name: str) -> None:
        if count(name) > now_ms + CLOCK_SLACK_MS:
            bad.append(name)

    state, mode = fields.get("state"), fields.get("mode")
    if state is not None and state not in _STORED_STATES:
        bad.append("state")
    if mode is not None and mode not in _STORED_MODES:
        bad.append("mode")
    for name in ("gen", "fails"):
        count(name)
    moment("opened_at")
    moment("ho_since")
    count("ho_ok")
    w_pos, w_count, w_fail = count("w_pos"), count("w_count"), count("w_fail")
    count("permit_seq")
    if w_count > MAX_WINDOW:
        bad.append("w_count")
    elif w_pos > w_count:
        bad.append("w_pos")
    elif w_fail > w_count:
        bad.append("w_fail")
    return tuple(bad)


_STORED_STATES = frozenset(name.encode() for name in STATES)
_STORED_MODES = frozenset(name.encode() for name in MODES)


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


def key_ttl(config: BreakerConfig) -> float:
    """Seconds a breaker's keys live after their last write (in mode ``normal``)."""
    longest = max(config.reset_timeout, config.half_open_max_duration or 0.0,
                  config.permit_ttl or 0.0)
    return max(KEY_TTL_MIN, KEY_TTL_TIMEOUTS * longest)


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
            _ms(config.half_open_max_duration), _ms(config.permit_ttl),
            _ms(key_ttl(config)))).encode()
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

    def _connect(self) -> Any:
        if self._pid != os.getpid():
            self.after_fork()
        url = self.url
        if url is None:
            raise StoreUnconfigured(
                f"breaker {self.name!r}: storage='redis' without redis_url, and no "
                "TelemetryGuard has set the default (telemetry_guard.breaker."
                "set_default_redis_url)")
        self._client, self._script = _shared_client(url)
        return self._script

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


def read_states(stores: Iterable[RedisBreakerStore]) -> dict[str, str | None]:
    """The stored state of each breaker by name, one pipelined round trip per Redis URL.

    No script runs: each hash is read with HMGET (cluster-friendly: one key per command) and
    checked as the script checks it; an invalid hash is None. When a Redis cannot be read,
    its breakers get the state this process last saw, and the error is reported once.
    """
    by_url: dict[str, list[RedisBreakerStore]] = {}
    states: dict[str, str | None] = {}
    for store in stores:
        url = store.url
        if url is None:
            states[store.name] = store.local_state()
        else:
            by_url.setdefault(url, []).append(store)
    for url, group in by_url.items():
        try:
            client = _shared_client(url)[0]
            pipe = client.pipeline(transaction=False)
            pipe.time()
            for store in group:
                pipe.hmget(store.keys[0], FIELDS)
            replies = pipe.execute()
            seconds, micros = replies[0]
            now_ms = seconds * 1000 + micros // 1000
            for store, values in zip(group, replies[1:], strict=True):
                fields = dict(zip(FIELDS, values, strict=True))
                if stored_problems(fields, now_ms):
                    states[store.name] = None
                else:
                    raw = fields["state"]
                    states[store.name] = CLOSED if raw is None else _TEXT[raw]
        except Exception as exc:
            report_error(STORE_SINK, exc)
            for store in group:
                states[store.name] = store.local_state()
    return states
