"""``resilient_request``: the built-in HTTP task — retries, a breaker per host, a cached fallback.

    Exception
    ├── HTTPStatusError             a non-2xx answer: ``status``, ``url``, ``retry_after``
    │   ├── HTTPClientError         4xx but 429 (or an unfollowed 3xx): never retried;
    │   │                           a success for the host's breaker
    │   └── TransientHTTPError      5xx and 429: retried, honouring ``Retry-After``
    ├── HTTPConnectionError         (a ConnectionError) the host could not be reached
    └── HTTPTimeoutError            (a TimeoutError) no answer within ``timeout``

Messages and attributes name the status and the URL without userinfo, query or fragment;
never a header. Register the task on an app with :func:`register_resilient_request`.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import http.client
import json as jsonlib
import math
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import redis

from .breaker import CircuitBreaker, get_breaker, unregister
from .callbacks import outcome_for
from .exceptions import CircuitOpenError
from .policy import RetryPolicy
from .task import GuardedTask

DEFAULT_NAME = "telemetry_guard.resilient_request"
#: Seconds a successful JSON response stays in the fallback cache.
DEFAULT_CACHE_TTL = 300.0
#: A larger body is refused (a ValueError, not retried) rather than held in memory.
MAX_BODY_BYTES = 10 * 1024 * 1024
#: Seconds the cache's Redis client waits before the cache is skipped (it fails open).
CACHE_SOCKET_TIMEOUT = 2.0
#: Headers dropped when a redirect leaves the origin they were meant for.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
SCHEMES = ("http", "https")
#: Host breakers one process keeps; past it the least recently used is dropped (its state
#: stays in Redis and is read again when that host is next called).
MAX_HOST_BREAKERS = 256


class HTTPStatusError(Exception):
    """The server answered with a non-2xx status (``url`` has no userinfo, query or fragment)."""

    def __init__(self, status: int, url: str, retry_after: float | None = None) -> None:
        super().__init__(status, url, retry_after)
        self.status = status
        self.url = url
        self.retry_after = retry_after

    def __str__(self) -> str:
        wait = f" (retry after {self.retry_after:g}s)" if self.retry_after is not None else ""
        return f"HTTP {self.status} from {self.url}{wait}"

    def __reduce__(self) -> tuple[type[HTTPStatusError], tuple[int, str, float | None]]:
        return (type(self), (self.status, self.url, self.retry_after))


class HTTPClientError(HTTPStatusError):
    """4xx other than 429 (or an unfollowed 3xx): the request is wrong, retrying cannot help."""


class TransientHTTPError(HTTPStatusError):
    """5xx, or 429 Too Many Requests: the server may answer later (see ``retry_after``)."""


class HTTPConnectionError(ConnectionError):
    """The host could not be reached, or dropped the connection (``reason`` says how)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot reach {self.url}: {self.reason}"

    def __reduce__(self) -> tuple[type[HTTPConnectionError], tuple[str, str]]:
        return (type(self), (self.url, self.reason))


class HTTPTimeoutError(TimeoutError):
    """No answer from ``url`` within ``timeout`` seconds."""

    def __init__(self, url: str, timeout: float) -> None:
        super().__init__(url, timeout)
        self.url = url
        self.timeout = timeout

    def __str__(self) -> str:
        return f"no answer from {self.url} within {self.timeout:g}s"

    def __reduce__(self) -> tuple[type[HTTPTimeoutError], tuple[str, float]]:
        return (type(self), (self.url, self.timeout))


HTTP_RETRY_POLICY = RetryPolicy(
    max_retries=5, base_delay=1.0, max_delay=60.0,
    retry_on=(TransientHTTPError, ConnectionError, TimeoutError))


def status_error(status: int, url: str, retry_after: float | None = None) -> HTTPStatusError:
    """The exception for a non-2xx ``status``: transient for 5xx and 429, else a client error."""
    transient = status >= 500 or status == 429
    return (TransientHTTPError if transient else HTTPClientError)(status, url, retry_after)


def safe_url(url: str) -> str:
    """``url`` without userinfo, query and fragment: what messages and progress may show."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
        return urllib.parse.urlunsplit((parts.scheme, host + port, parts.path, "", ""))
    except ValueError:
        return "<invalid url>"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delay-seconds or an HTTP date); None if bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def cache_key(key_prefix: str, method: str, url: str, params: Any = None, json: Any = None,
              headers: Mapping[str, str] | None = None) -> str:
    """``<key_prefix>http_cache:<sha256>`` of the method, URL, params, JSON body and credentials.

    Credential headers (``Authorization``, ``Cookie``) are part of the digest, so one caller's
    cached answer is never served to a caller with other credentials.
    """
    credentials = sorted((k.lower(), str(v)) for k, v in (headers or {}).items()
                         if k.lower() in CREDENTIAL_HEADERS)
    material = [method.upper(), url, params, json, credentials] if credentials else [
        method.upper(), url, params, json]
    canonical = jsonlib.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return f"{key_prefix}http_cache:{hashlib.sha256(canonical.encode()).hexdigest()}"


def breaker_name(url: str) -> str:
    """``http:<host>`` (with ``:<port>`` when the URL names one): one breaker per host."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"http:{host}:{parts.port}" if parts.port is not None else f"http:{host}"


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) only, dropping credentials when the origin changes."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is None:
            return None
        target = urllib.parse.urlsplit(new.full_url)
        if target.scheme not in SCHEMES:
            raise status_error(code, safe_url(req.full_url))
        origin = urllib.parse.urlsplit(req.full_url)
        if (target.scheme, target.netloc) != (origin.scheme, origin.netloc):
            for name in [n for n in new.headers if n.lower() in CREDENTIAL_HEADERS]:
                del new.headers[name]
        return new


_opener: urllib.request.OpenerDirector | None = None


def _get_opener() -> urllib.request.OpenerDirector:
    """http(s) only (no file:, ftp: or data: handlers), built on first use."""
    global _opener
    if _opener is None:
        opener = urllib.request.OpenerDirector()
        for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(),
                        urllib.request.HTTPSHandler(), urllib.request.HTTPDefaultErrorHandler(),
                        _RedirectHandler(), urllib.request.HTTPErrorProcessor()):
            opener.add_handler(handler)
        _opener = opener
    return _opener


class _CacheClients:
    """One Redis client per URL and process (re-created after a fork)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._clients: dict[str, redis.Redis] = {}

    def get(self, url: str) -> redis.Redis:
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._clients = os.getpid(), {}
            client = self._clients.get(url)
            if client is None:
                client = self._clients[url] = redis.Redis.from_url(
                    url, socket_timeout=CACHE_SOCKET_TIMEOUT,
                    socket_connect_timeout=CACHE_SOCKET_TIMEOUT)
            return client


_cache_clients = _CacheClients()


class HostBreakers:
    """The breakers ``resilient_request`` made, one per host, at most ``limit`` of them.

    Past the limit the least recently used is unregistered. A Redis breaker loses nothing:
    its state is in Redis, and a call still holding it finishes on it. A memory breaker is
    dropped only when closed, without failures, in mode normal (nothing to forget). A
    breaker someone else registered under ``http:<host>`` is used as it is, never dropped.
    """

    def __init__(self, limit: int = MAX_HOST_BREAKERS) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._used: OrderedDict[str, CircuitBreaker] = OrderedDict()
        self._fork_hook = False

    def __len__(self) -> int:
        return len(self._used)

    def get(self, name: str, build: Callable[[], CircuitBreaker]) -> CircuitBreaker:
        """The breaker registered as ``name``, else ``build()``'s, which is then kept."""
        if not self._fork_hook:
            self._fork_hook = True
            os.register_at_fork(after_in_child=self.after_fork)
        with self._lock:
            found = get_breaker(name)
            if found is not None:
                kept = self._used.get(name)
                if kept is found:
                    self._used.move_to_end(name)
                elif kept is not None:
                    del self._used[name]  # replaced by a breaker of the application's
                return found
            made = self._used[name] = build()
            if len(self._used) > self.limit:
                self._drop_idle()
            return made

    def after_fork(self) -> None:
        """A new lock in a forked child (another thread of the parent may have held it)."""
        self._lock = threading.Lock()

    def _drop_idle(self) -> None:
        excess = len(self._used) - self.limit
        for name, breaker in list(self._used.items())[:-1]:
            if excess <= 0:
                return
            if breaker.storage == "memory":
                snap = breaker.snapshot()
                if (snap.state, snap.mode, snap.consecutive_failures) != ("closed", "normal", 0):
                    continue
            del self._used[name]
            unregister(breaker)
            excess -= 1


host_breakers = HostBreakers()


class ResilientRequestTask(GuardedTask):
    """The task class of ``resilient_request``; options ``cache_ttl`` and ``breaker_defaults``."""

    cache_ttl: float | None = DEFAULT_CACHE_TTL
    breaker_defaults: Mapping[str, Any] | None = None

    def host_breaker(self, url: str) -> CircuitBreaker:
        """The breaker ``http:<host>`` from the registry, created on first use (Redis-backed).

        This process keeps at most ``MAX_HOST_BREAKERS`` of those it made (see HostBreakers).
        """
        name = breaker_name(url)

        def build() -> CircuitBreaker:
            options: dict[str, Any] = {"storage": "redis", "exclude": (HTTPClientError,)}
            guard = getattr(self.app, "_telemetry_guard", None)
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
        value = jsonlib.dumps({"body": body, "cached_at": _now_iso()}, separators=(",", ":"))
        try:
            _cache_clients.get(redis_url).set(key, value, px=max(1, int(ttl * 1000)))
        except Exception as exc:
            self._report_error("http_cache", exc)

    def load_cached(self, key: str) -> dict[str, Any] | None:
        """The cached ``{"body", "cached_at"}`` under ``key``, or None (fails open)."""
        redis_url = self._redis_url()
        if redis_url is None:
            return None
        try:
            raw = _cache_clients.get(redis_url).get(key)
            found = jsonlib.loads(raw) if raw is not None else None
        except Exception as exc:
            self._report_error("http_cache", exc)
            return None
        return found if isinstance(found, dict) and "body" in found else None

    def cached_fallback(self, method: str, url: str, params: Any = None, json: Any = None,
                        headers: Mapping[str, str] | None = None,
                        timeout: float = 10.0) -> dict[str, Any]:
        """The answer when the breaker is open or retries ran out: the cached body, if any.

        Called by GuardedTask inside its exception handler. A failure that retrying could
        never fix (a 4xx, a bad URL) is raised again: a fallback must not hide it.
        """
        exc = sys.exc_info()[1]
        if isinstance(exc, Exception) and not isinstance(exc, CircuitOpenError):
            guard = getattr(self.app, "_telemetry_guard", None)
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
        guard = getattr(self.app, "_telemetry_guard", None)
        prefix = guard.settings.key_prefix if guard is not None else "telemetry_guard:"
        try:
            return cache_key(prefix, method, url, params, json, headers)
        except (TypeError, ValueError):
            return None

    def _redis_url(self) -> str | None:
        guard = getattr(self.app, "_telemetry_guard", None)
        return guard.settings.redis_url if guard is not None else None

    def _report_error(self, sink: str, exc: BaseException) -> None:
        guard = getattr(self.app, "_telemetry_guard", None)
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
    request, shown = _build_request(method, url, params, json, headers)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    self.report_progress(shown)
    status, content_type, charset, body = self.host_breaker(url).call(
        _send, request, shown, float(timeout))
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"response from {shown} exceeds {MAX_BODY_BYTES} bytes")
    data, is_json = _decode(body, content_type, charset)
    key = self._cache_key(method, url, params, json, headers) if is_json else None
    if key is not None:
        self.store_cached(key, data)
    return {"status": "ok", "status_code": status, "data": data, "cached_at": None}


def _build_request(method: str, url: str, params: Any, json: Any,
                   headers: Mapping[str, str] | None) -> tuple[urllib.request.Request, str]:
    """The urllib request (userinfo moved to Basic auth) and the URL that may be shown."""
    if not isinstance(method, str) or not method.isalpha():
        raise ValueError(f"method must be an HTTP method name, got {method!r}")
    if not isinstance(url, str):
        raise ValueError("url must be a string")
    shown = safe_url(url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in SCHEMES or not parts.hostname or shown == "<invalid url>":
        raise ValueError(f"url must be an absolute http(s) URL, got {shown!r}")
    query = parts.query
    if params:
        extra = urllib.parse.urlencode(params, doseq=True)
        query = f"{query}&{extra}" if query else extra
    netloc = parts.netloc.rpartition("@")[2]
    target = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", query, ""))
    sent = {str(k): str(v) for k, v in (headers or {}).items()}
    lowered = {k.lower() for k in sent}
    if parts.username is not None and "authorization" not in lowered:
        user, password = parts.username, parts.password or ""
        pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
        sent["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    data = None
    if json is not None:
        data = jsonlib.dumps(json, separators=(",", ":")).encode()
        if "content-type" not in lowered:
            sent["Content-Type"] = "application/json"
    request = urllib.request.Request(target, data=data, headers=sent, method=method.upper())
    return request, shown


def _send(request: urllib.request.Request, shown: str,
          timeout: float) -> tuple[int, str, str, bytes]:
    """Send ``request``; a non-2xx answer or a transport failure becomes one of our errors."""
    try:
        with _get_opener().open(request, timeout=timeout) as response:
            body = response.read(MAX_BODY_BYTES + 1)
            headers = response.headers
            return (response.status, headers.get_content_type(),
                    headers.get_content_charset() or "utf-8", body)
    except urllib.error.HTTPError as exc:
        status = exc.code
        retry_after = parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None)
        exc.close()
        raise status_error(status, shown, retry_after) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise HTTPTimeoutError(shown, timeout) from None
        raise HTTPConnectionError(shown, _reason(exc.reason)) from None
    except TimeoutError:
        raise HTTPTimeoutError(shown, timeout) from None
    except (OSError, http.client.HTTPException) as exc:
        raise HTTPConnectionError(shown, _reason(exc)) from None


def _reason(reason: object) -> str:
    text = str(reason) if not isinstance(reason, BaseException) else (
        f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__)
    return text[:200]


def _decode(body: bytes, content_type: str, charset: str) -> tuple[Any, bool]:
    """Parsed JSON (and True) for a JSON content type that parses; else the text (and False)."""
    if not body:
        return None, False
    try:
        text = body.decode(charset, errors="replace")
    except LookupError:
        text = body.decode("utf-8", errors="replace")
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            return jsonlib.loads(text), True
        except ValueError:
            return text, False
    return text, False


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def register_resilient_request(
    app: Any, *, name: str = DEFAULT_NAME, retry_policy: RetryPolicy | None = None,
    cache_ttl: float | None = DEFAULT_CACHE_TTL,
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
