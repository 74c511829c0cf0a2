"""The breaker's Lua script seen from Python: its configuration argument and its decoded reply.

The script is ``stores/lua/breaker.lua`` (run by ``EVALSHA``); its header documents the keys,
the arguments and the reply. A reply is read only here, by ``parse_reply``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .redis_hash import CLOCK_SLACK_MS, MAX_WINDOW, TEXT, InvalidBreakerState, key_ttl
from .state import BreakerConfig, Transition

#: The script's name under ``stores/lua``.
SCRIPT_NAME = "breaker"

_INVALID = b"invalid"
#: Fields of a reply before its transitions (three fields each).
_HEADER = 11


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


def _ms(seconds: float | None) -> str:
    return str(max(1, round((seconds or 0.0) * 1000)))


def script_config(config: BreakerConfig) -> bytes:
    """The script's configuration argument (``ARGV[2]``) for a breaker of this ``config``."""
    rate = config.failure_rate_threshold
    return " ".join((
        str(config.failure_threshold), _ms(config.reset_timeout),
        str(config.half_open_max_calls), repr(rate) if rate is not None else "-1",
        str(config.window_size), str(config.rate_minimum),
        _ms(config.half_open_max_duration), _ms(config.permit_ttl),
        _ms(key_ttl(config)), str(CLOCK_SLACK_MS), str(MAX_WINDOW))).encode()


def parse_reply(breaker: str, raw: bytes) -> ScriptReply:
    """The script's one-line reply as a ScriptReply; InvalidBreakerState or ValueError if bad."""
    parts = raw.split()
    if parts and parts[0] == _INVALID:
        raise InvalidBreakerState(breaker, tuple(p.decode("ascii", "replace") for p in parts[1:]))
    if len(parts) < _HEADER or (len(parts) - _HEADER) % 3:
        raise ValueError(f"breaker {breaker!r}: unexpected script reply of {len(parts)} fields")
    try:
        state, mode = TEXT[parts[0]], TEXT[parts[2]]
        at = int(parts[6]) / 1000
        transitions = tuple(
            Transition(TEXT[parts[i]], TEXT[parts[i + 1]], parts[i + 2].decode(), at)
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
