"""``resilient_request``: the HTTP task — retries, a breaker per host, a cached fallback.

Registered on an app only by :func:`register_resilient_request` (or
:func:`resilient_request_task`); the guard never registers it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from ..breaker import CircuitBreaker
from ..core.policy import RetryPolicy
from ..exceptions import CircuitOpenError
from ..integration.callbacks import outcome_for
from ..integration.task import GuardedTask
from ..integration.task_guard import guard_of
from . import _http_cache as http_cache
from ._host_breakers import breaker_name, host_breakers
from ._http_client import MAX_BODY_BYTES, decode, prepare, send
from ._http_errors import HTTPClientError, TransientHTTPError

DEFAULT_NAME = "telemetry_guard.resilient_request"
DEFAULT_PREFIX = "telemetry_guard:"

HTTP_RETRY_POLICY = RetryPolicy(
    max_retries=5, base_delay=1.0, max_delay=60.0,
    retry_on=(TransientHTTPError, ConnectionError, TimeoutError))


class ResilientRequestTask(GuardedTask):
    """The task class of ``resilient_request``; options ``cache_ttl`` and ``breaker_defaults``."""

    cache_ttl: float | None = http_cache.DEFAULT_CACHE_TTL
    breaker_defaults: Mapping[str, Any] | None = None

    def host_breaker(self, url: str) -> CircuitBreaker:
        """The breaker ``http:<host>`` from the registry, created on first use (Redis-backed).

        This process keeps at most ``MAX_HOST_BREAKERS`` of those it made (see HostBreakers).
        """
        name = breaker_name(url)

        def build() -> CircuitBreaker:
            options: dict[str, Any] = {"storage": "redis", "exclude": (HTTPClientError,)}
            guard = self._guard()
            if guard is not None:
                options["key_prefix"] = guard.settings.key_prefix
            options.update(self.breaker_defaults or {})
            return CircuitBreaker(name, **options)

        return host_breakers.get(name, build)

    def report_progress(self, url: str) -> None:
        """``PROGRESS`` with the attempt number and the URL without query (fails open)."""
        request = self.request
        if not request.id:
            return
        try:
            self.update_state(state="PROGRESS",
                              meta={"attempt": (request.retries or 0) + 1, "url": url})
        except Exception as exc:
            self._report_error("progress", exc)

    def store_cached(self, key: str, body: Any) -> None:
        """Keep a JSON body for the fallback, ``cache_ttl`` seconds (fails open)."""
        redis_url = self._redis_url()
        ttl = self.cache_ttl
        if redis_url is None or not ttl or ttl <= 0:
            return
        try:
            http_cache.store(redis_url, key, body, ttl)
        except Exception as exc:
            self._report_error("http_cache", exc)

    def load_cached(self, key: str) -> dict[str, Any] | None:
        """The cached ``{"body", "cached_at"}`` under ``key``, or None (fails open)."""
        redis_url = self._redis_url()
        if redis_url is None:
            return None
        try:
            return http_cache.load(redis_url, key)
        except Exception as exc:
            self._report_error("http_cache", exc)
            return None

    def cached_fallback(self, method: str, url: str, params: Any = None, json: Any = None,
                        headers: Mapping[str, str] | None = None,
                        timeout: float = 10.0) -> dict[str, Any]:
        """The answer when the breaker is open or retries ran out: the cached body, if any.

        Called by GuardedTask inside its exception handler. A failure that retrying could
        never fix (a 4xx, a bad URL) is raised again: a fallback must not hide it.
        """
        exc = sys.exc_info()[1]
        if isinstance(exc, Exception) and not isinstance(exc, CircuitOpenError):
            guard = self._guard()
            policy = guard.policy_for(self) if guard is not None else HTTP_RETRY_POLICY
            if not policy.should_retry(exc):
                replacement = outcome_for(exc)
                if replacement is not exc:
                    raise replacement from None
                raise exc
        key = self._cache_key(method, url, params, json, headers)
        cached = self.load_cached(key) if key is not None else None
        if cached is None:
            return {"status": "fallback", "data": None, "cached_at": None}
        return {"status": "fallback", "data": cached["body"], "cached_at": cached.get("cached_at")}

    def _cache_key(self, method: str, url: str, params: Any, json: Any,
                   headers: Mapping[str, str] | None) -> str | None:
        """The cache key of these arguments; None when they cannot be keyed (mixed key types)."""
        guard = self._guard()
        prefix = guard.settings.key_prefix if guard is not None else DEFAULT_PREFIX
        try:
            return http_cache.cache_key(prefix, method, url, params, json, headers)
        except (TypeError, ValueError):
            return None

    def _guard(self) -> Any:
        """The app's TelemetryGuard, if it has one."""
        return guard_of(self.app)

    def _redis_url(self) -> str | None:
        guard = self._guard()
        return guard.settings.redis_url if guard is not None else None

    def _report_error(self, sink: str, exc: BaseException) -> None:
        guard = self._guard()
        if guard is not None:
            guard.report_error(sink, exc)


class CachedFallback:
    """The ``fallback`` option of a resilient_request task: ``task.cached_fallback``.

    A plain callable object, not a function, so that it is called as
    ``fallback(*args, **kwargs)`` whether it is read from the task or from its class.
    """

    def __init__(self, task: ResilientRequestTask) -> None:
        self.task = task

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.task.cached_fallback(*args, **kwargs)


def _resilient_request(self: ResilientRequestTask, method: str, url: str, params: Any = None,
                       json: Any = None, headers: Mapping[str, str] | None = None,
                       timeout: float = 10.0) -> dict[str, Any]:
    """Send one HTTP request through the host's breaker; JSON answers are cached for fallback."""
    request = prepare(method, url, params, json, headers)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    self.report_progress(request.shown)
    answer = self.host_breaker(url).call(send, request, float(timeout))
    if len(answer.body) > MAX_BODY_BYTES:
        raise ValueError(f"response from {request.shown} exceeds {MAX_BODY_BYTES} bytes")
    data, is_json = decode(answer.body, answer.content_type, answer.charset)
    key = self._cache_key(method, url, params, json, headers) if is_json else None
    if key is not None:
        self.store_cached(key, data)
    return {"status": "ok", "status_code": answer.status, "data": data, "cached_at": None}


def register_resilient_request(
    app: Any, *, name: str = DEFAULT_NAME, retry_policy: RetryPolicy | None = None,
    cache_ttl: float | None = http_cache.DEFAULT_CACHE_TTL,
    breaker_defaults: Mapping[str, Any] | None = None,
) -> ResilientRequestTask:
    """Register ``resilient_request`` on ``app`` and return the task; the latest call wins.

    The task takes ``method, url, params=None, json=None, headers=None, timeout=10.0`` and
    returns ``{"status": "ok" | "fallback", "status_code", "data", "cached_at"}``.
    ``breaker_defaults`` are keyword arguments for each host's ``CircuitBreaker`` (a breaker
    already registered under ``http:<host>`` is used as it is).
    """
    if cache_ttl is not None and (not isinstance(cache_ttl, (int, float))
                                  or isinstance(cache_ttl, bool) or cache_ttl < 0):
        raise ValueError(f"cache_ttl must be seconds >= 0 or None, got {cache_ttl!r}")
    task = app.task(_resilient_request, name=name, base=ResilientRequestTask, bind=True,
                    shared=False, lazy=False)
    if not isinstance(task, ResilientRequestTask):
        raise RuntimeError(f"the app already has a task named {name!r}")
    options = type(task)  # the class app.task made for this task alone, where options live
    options.retry_policy = retry_policy if retry_policy is not None else HTTP_RETRY_POLICY
    options.cache_ttl = cache_ttl
    options.breaker_defaults = dict(breaker_defaults or {})
    options.fallback = CachedFallback(task)
    return task


def resilient_request_task(app: Any) -> ResilientRequestTask:
    """The task registered under ``DEFAULT_NAME`` on ``app``; registered with defaults if absent."""
    existing = app._tasks.get(DEFAULT_NAME) if hasattr(app, "_tasks") else None
    if isinstance(existing, ResilientRequestTask):
        return existing
    return register_resilient_request(app)
