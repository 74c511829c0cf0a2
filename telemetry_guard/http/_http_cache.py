"""The fallback cache of ``resilient_request``: successful JSON bodies, in Redis, for a while.

A value is ``{"body": ..., "cached_at": "<ISO 8601, UTC>"}`` under ``cache_key(...)``,
written with a TTL. The caller decides what a Redis failure means (the task fails open).
"""

from __future__ import annotations

import hashlib
import json as jsonlib
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ..stores.redis_client import redis_client
from ._http_client import CREDENTIAL_HEADERS

#: Seconds a successful JSON response stays in the fallback cache.
DEFAULT_CACHE_TTL = 300.0
#: Seconds the cache's Redis client waits before the cache is skipped (it fails open).
CACHE_SOCKET_TIMEOUT = 2.0


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


def store(redis_url: str, key: str, body: Any, ttl: float) -> None:
    """Keep ``body`` under ``key`` for ``ttl`` seconds, stamped with the time it was cached."""
    value = jsonlib.dumps({"body": body, "cached_at": _now_iso()}, separators=(",", ":"))
    _client(redis_url).set(key, value, px=max(1, int(ttl * 1000)))


def load(redis_url: str, key: str) -> dict[str, Any] | None:
    """The cached ``{"body", "cached_at"}`` under ``key``; None when absent or not ours."""
    raw = _client(redis_url).get(key)
    found = jsonlib.loads(raw) if raw is not None else None
    return found if isinstance(found, dict) and "body" in found else None


def _client(redis_url: str) -> Any:
    return redis_client(redis_url, timeout=CACHE_SOCKET_TIMEOUT)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
