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
(``stores/lua/retry_budget.lua``), one atomic call per decision on Redis server time;
``advance`` is the same arithmetic as a pure function, for tests.

``deposit`` runs at every task start, so it only increments a per-process counter under a
lock (no I/O); a background writer (``stores.background``) writes the accumulated deposits
of every scope every ``flush_interval`` seconds in one pipelined round trip. ``withdraw``
makes one round trip and hands over this process's pending deposits for the scope in the
same script call, so the deposit of the attempt that is asking to retry counts. The
per-process state (lock, counters, thread, client) is rebuilt in a forked child. The budget
fails open: while Redis cannot be used, ``withdraw`` answers True (asking Redis again
after ``RETRY_REDIS_AFTER`` seconds), deposits that could not be written are dropped (an
outage must not bank retries for later), and each failure is reported as
``("retry_budget", exc)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from time import monotonic
from typing import TYPE_CHECKING

from ..core.sink import Sink
from .background import BackgroundWriter, Tally
from .redis_client import redis_client
from .scripts import bind, run_batch

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

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

#: The script of the bucket's arithmetic, under ``stores/lua``.
SCRIPT_NAME = "retry_budget"


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
        #: Monotonic time before which ``withdraw`` does not ask Redis; 0.0 while Redis works.
        self._down_until = 0.0
        #: Deposits not yet written, per scope (a per-process tally, dropped when Redis fails).
        self._writer = BackgroundWriter(
            "telemetry_guard-retry-budget", self._write, Tally, linger=flush_interval,
            backoff=flush_interval, max_backoff=MAX_BACKOFF, on_error=self._failed,
            exit_flush=EXIT_FLUSH_TIMEOUT)

    # -- the task's side -------------------------------------------------------------------

    def deposit(self, scope: str) -> None:
        """Count one first attempt of ``scope``: a counter increment, written later."""
        self._writer.add(scope)

    def withdraw(self, scope: str) -> bool:
        """May one retry of ``scope`` happen now? One script call; True while Redis is down."""
        if self._down_until:
            if monotonic() < self._down_until:
                return True
        with self._writer.locked() as pending:
            deposits = pending.pop(scope)
        try:
            script = self._connection()[1]
            granted = script(keys=(self._key_base + scope,), args=(*self._args, deposits, 1))
        except Exception as exc:
            self._failed(exc)
            self._down_until = monotonic() + RETRY_REDIS_AFTER
            return True
        self._down_until = 0.0
        return bool(granted == 1)

    # -- Redis -----------------------------------------------------------------------------

    def _write(self, batch: dict[str, int]) -> None:
        """All scopes' deposits in one pipelined round trip (no withdrawal)."""
        client, script = self._connection()
        replies = run_batch(client, [(script, (self._key_base + scope,),
                                      (*self._args, deposits, 0))
                                     for scope, deposits in batch.items()])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply

    def _connection(self) -> tuple[redis.Redis, Script]:
        """This process's shared client and the script bound to it."""
        client = redis_client(self.redis_url, timeout=SOCKET_TIMEOUT, retries=1)
        return client, bind(client, SCRIPT_NAME)

    def _failed(self, exc: BaseException) -> None:
        """Redis could not be used: report, never raising."""
        try:
            self._report_error(SINK, exc)
        except Exception:
            pass

    # -- lifecycle -------------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> None:
        """Write this process's pending deposits now; wait at most ``timeout`` seconds."""
        self._writer.flush(timeout)

    def after_fork(self) -> None:
        """Start afresh in a forked child: new lock, counters and writer thread."""
        self._writer.reset()
        self._down_until = 0.0

    def close(self) -> None:
        """Write the pending deposits and stop the writer (the shared client stays open)."""
        self._writer.close()


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
