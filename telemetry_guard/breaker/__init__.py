"""Circuit breakers whose state is shared in Redis (or kept in this process), with hooks."""

from __future__ import annotations

from ..exceptions import CircuitOpenError
from .breaker import (
    CircuitBreaker,
    after_fork,
    all_breakers,
    get_breaker,
    set_default_redis_url,
    unregister,
)
from .default_url import get_default_redis_url, set_pending_setup
from .hooks import (
    CallListener,
    ErrorListener,
    TransitionListener,
    set_call_listener,
    set_error_listener,
    set_transition_listener,
)
from .memory import MemoryBreakerStore
from .redis_hash import InvalidBreakerState
from .redis_store import RedisBreakerStore
from .scrape import states
from .state import BreakerConfig, BreakerSnapshot

__all__ = [
    "BreakerConfig",
    "BreakerSnapshot",
    "CallListener",
    "CircuitBreaker",
    "CircuitOpenError",
    "ErrorListener",
    "InvalidBreakerState",
    "MemoryBreakerStore",
    "RedisBreakerStore",
    "TransitionListener",
    "after_fork",
    "all_breakers",
    "get_breaker",
    "get_default_redis_url",
    "set_call_listener",
    "set_default_redis_url",
    "set_pending_setup",
    "set_error_listener",
    "set_transition_listener",
    "states",
    "unregister",
]
