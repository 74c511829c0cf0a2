"""``resilient_request``: the built-in HTTP task — retries, a breaker per host, a cached fallback.

An opt-in extra: an app has the task once :func:`register_resilient_request` registered it.
Its errors, all named ``telemetry_guard.http.<name>``, are drawn as a tree in
``_http_errors``. Messages and attributes name the status and the URL without userinfo,
query or fragment; never a header. The parts of this package: the httpx client
(``_http_client``), the fallback cache (``_http_cache``), the host breakers
(``_host_breakers``) and the task (``_resilient_request``).
"""

from __future__ import annotations

from ._host_breakers import MAX_HOST_BREAKERS, HostBreakers, breaker_name, host_breakers
from ._http_cache import CACHE_SOCKET_TIMEOUT, DEFAULT_CACHE_TTL, cache_key
from ._http_client import (
    CREDENTIAL_HEADERS,
    MAX_BODY_BYTES,
    SCHEMES,
    parse_retry_after,
    safe_url,
)
from ._http_errors import (
    HTTPClientError,
    HTTPConnectionError,
    HTTPStatusError,
    HTTPTimeoutError,
    TransientHTTPError,
    status_error,
)
from ._resilient_request import (
    DEFAULT_NAME,
    HTTP_RETRY_POLICY,
    CachedFallback,
    ResilientRequestTask,
    register_resilient_request,
    resilient_request_task,
)

__all__ = [
    "CACHE_SOCKET_TIMEOUT",
    "CREDENTIAL_HEADERS",
    "DEFAULT_CACHE_TTL",
    "DEFAULT_NAME",
    "HTTP_RETRY_POLICY",
    "MAX_BODY_BYTES",
    "MAX_HOST_BREAKERS",
    "SCHEMES",
    "CachedFallback",
    "HTTPClientError",
    "HTTPConnectionError",
    "HTTPStatusError",
    "HTTPTimeoutError",
    "HostBreakers",
    "ResilientRequestTask",
    "TransientHTTPError",
    "breaker_name",
    "cache_key",
    "host_breakers",
    "parse_retry_after",
    "register_resilient_request",
    "resilient_request_task",
    "safe_url",
    "status_error",
]
