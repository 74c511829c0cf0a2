"""A breaker's keys in Redis: their names, how long they live, and which values are valid.

Keys (``<prefix>`` defaults to ``telemetry_guard:``), hash-tagged with the breaker's name so
that all three live in one Redis Cluster slot (one layout in every mode):

- ``<prefix>breaker:{<name>}`` hash: ``state``, ``mode``, ``gen``, ``fails``, ``opened_at`` and
  ``ho_since`` (server milliseconds), ``ho_ok`` (half-open successes), ``permit_seq``, and the
  failure-rate window's ``w_pos``, ``w_count``, ``w_fail``;
- ``<prefix>breaker:{<name>}:permits`` zset: half-open trial permits, score = lease expiry (ms);
- ``<prefix>breaker:{<name>}:window`` bitmap: the last ``window_size`` outcomes (1 = failure).

A hash holding values no breaker writes (an unknown state or mode; a count or moment that is
not a plain integer, such as ``nan``, ``inf``, ``1e300`` or text; a moment far ahead of Redis'
clock; window counters that contradict each other) is invalid. The Lua script
(``stores/lua/breaker.lua``) checks it on every call; ``stored_problems`` is the same check in
Python, for the CLI and the state gauge.

Every key of a breaker in mode ``normal`` expires ``key_ttl(config)`` after its last write
(at least a day); a breaker with nothing to remember (closed, no failures) simply vanishes.
A mode an operator set (``disabled``, ``forced_open``, ``metrics_only``) never expires.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .state import CLOSED, MODES, STATES, BreakerConfig

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

#: A stored state or mode as text.
TEXT = {name.encode(): name for name in (*STATES, *MODES)}
#: A count or moment as the script writes it: at most 14 digits, which Lua prints exactly.
_DIGITS = re.compile(rb"[0-9]{1,14}")
_STORED_STATES = frozenset(name.encode() for name in STATES)
_STORED_MODES = frozenset(name.encode() for name in MODES)


class InvalidBreakerState(ValueError):
    """The breaker's hash in Redis holds values no breaker writes; ``fields`` names them.

    Calls fall back as during a Redis outage; ``reset``, ``force_open`` and ``set_mode``
    (``breakers reset NAME``) rewrite the hash.
    """

    def __init__(self, breaker: str, fields: tuple[str, ...]) -> None:
        super().__init__(f"breaker {breaker!r}: invalid stored field(s) {', '.join(fields)}")
        self.breaker = breaker
        self.fields = fields


def breaker_hash_key(key_prefix: str, name: str) -> str:
    """The key of the breaker's hash: ``<prefix>breaker:{<name>}``."""
    return f"{key_prefix}breaker:{{{name}}}"


def breaker_keys(key_prefix: str, name: str) -> tuple[bytes, bytes, bytes]:
    """The breaker's hash, permits and window keys, in the order the script takes them.

    ValueError when they would not share a cluster slot (a name starting with ``}`` makes
    an empty hash tag).
    """
    from redis.crc import key_slot

    key = breaker_hash_key(key_prefix, name)
    keys = key.encode(), f"{key}:permits".encode(), f"{key}:window".encode()
    if len({key_slot(k) for k in keys}) != 1:
        raise ValueError(f"breaker name {name!r} cannot be a Redis hash tag (it may not be "
                         "empty or start with '}')")
    return keys


def breaker_name_of(key_prefix: str, key: str) -> str | None:
    """The breaker whose hash ``key`` is (``<prefix>breaker:{<name>}``), else None."""
    base = f"{key_prefix}breaker:{{"
    if key.startswith(base) and key.endswith("}") and len(key) > len(base) + 1:
        return key[len(base):-1]
    return None


def legacy_breaker_keys(key_prefix: str, name: str) -> tuple[str, str, str]:
    """The keys of a breaker before 0.2: ``<prefix>breaker:<name>`` and its two siblings
    (not hash-tagged: unusable in Redis Cluster; ``breakers migrate-keys`` moves them)."""
    key = f"{key_prefix}breaker:{name}"
    return key, f"{key}:permits", f"{key}:window"


def key_ttl(config: BreakerConfig) -> float:
    """Seconds a breaker's keys live after their last write (in mode ``normal``)."""
    longest = max(config.reset_timeout, config.half_open_max_duration or 0.0,
                  config.permit_ttl or 0.0)
    return max(KEY_TTL_MIN, KEY_TTL_TIMEOUTS * longest)


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


def stored_state(values: Sequence[bytes | None], now_ms: int) -> str | None:
    """The state an ``HMGET`` of ``FIELDS`` holds (closed when unset); None when invalid."""
    fields = dict(zip(FIELDS, values, strict=True))
    if stored_problems(fields, now_ms):
        return None
    raw = fields["state"]
    return CLOSED if raw is None else TEXT[raw]
