"""The HTTP client of ``resilient_request``: one pooled ``httpx.Client`` per process.

:func:`prepare` checks a request and builds it; :func:`send` sends it and turns every
answer that is not 2xx, and every httpx failure, into an error of ``_http_errors``.
Redirects are followed here, by urllib's rules: GET and HEAD on 301, 302, 303, 307 and
308, POST on 301, 302 and 303 (sent again as a GET without body), http(s) only, at most
ten, credentials dropped when the origin changes. The client keeps no cookies, trusts
the system's certificate store, and takes proxies from the environment. httpx is imported
on first use, not with the package.
"""

from __future__ import annotations

import base64
import email.message
import email.utils
import json as jsonlib
import math
import os
import string
import threading
import time
import urllib.parse
from collections.abc import Mapping
from datetime import timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from ._http_errors import HTTPConnectionError, HTTPTimeoutError, status_error

if TYPE_CHECKING:
    import httpx

#: A larger body is refused (a ValueError, not retried) rather than held in memory.
MAX_BODY_BYTES = 10 * 1024 * 1024
#: Headers dropped when a redirect leaves the origin they were meant for.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
SCHEMES = ("http", "https")
#: Redirects one request follows; past them (or the 5th visit of one URL) the 3xx is the answer.
MAX_REDIRECTS = 10
MAX_REPEATS = 4
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
#: Idle connections this process keeps open for reuse (every host together).
KEEPALIVE_CONNECTIONS = 20
#: The body of an error or a redirect is read (and its connection kept) up to this size.
DRAIN_BYTES = 64 * 1024
_BODY_HEADERS = frozenset({"content-length", "content-type"})


class Prepared(NamedTuple):
    """A checked request: the URL to send (no userinfo) and the one that may be shown."""

    method: str
    url: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes | None
    shown: str


class Answer(NamedTuple):
    """A 2xx answer: its status, media type, charset and body (at most one chunk too long)."""

    status: int
    content_type: str
    charset: str
    body: bytes


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


def prepare(method: str, url: str, params: Any = None, json: Any = None,
            headers: Mapping[str, str] | None = None) -> Prepared:
    """The request to send (userinfo moved to Basic auth); a ValueError when it is not one."""
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
    body = None
    if json is not None:
        body = jsonlib.dumps(json, separators=(",", ":")).encode()
        if "content-type" not in lowered:
            sent["Content-Type"] = "application/json"
    # as http.client encodes them: names in ASCII, values in Latin-1 (else a ValueError)
    encoded = tuple((k.encode("ascii"), v.encode("latin-1")) for k, v in sent.items())
    return Prepared(method.upper(), target, encoded, body, shown)


def send(request: Prepared, timeout: float) -> Answer:
    """Send ``request`` (following redirects); a non-2xx answer or a failure is our error."""
    import httpx

    shown = request.shown
    try:
        return _exchange(client(), request, timeout)
    except httpx.TimeoutException:
        raise HTTPTimeoutError(shown, timeout) from None
    except httpx.LocalProtocolError:
        raise ValueError(f"the request to {shown} is not valid HTTP (a header?)") from None
    except httpx.InvalidURL:
        raise ValueError(f"url must be an absolute http(s) URL, got {shown!r}") from None
    except (httpx.HTTPError, OSError) as exc:
        raise HTTPConnectionError(shown, _reason(exc)) from None


def _exchange(http: httpx.Client, request: Prepared, timeout: float) -> Answer:
    """The 2xx answer, redirects followed; any other status raised as a status error."""
    method, url, headers, body = request.method, request.url, request.headers, request.body
    visited: dict[str, int] = {}
    while True:
        response = http.send(http.build_request(method, url, headers=headers, content=body,
                                                timeout=timeout), stream=True)
        try:
            status = response.status_code
            if 200 <= status < 300:
                return _read(response)
            found = response.headers.get_list("retry-after")
            retry_after = parse_retry_after(found[0] if found else None)
            location = response.headers.get("location") or response.headers.get("uri")
            _drain(response)
        finally:
            response.close()
        new = _redirect_target(url, location) if location else ""
        follow = (status in REDIRECT_CODES and urllib.parse.urlsplit(new).scheme in SCHEMES
                  and (method in ("GET", "HEAD") or method == "POST" and status in (301, 302, 303))
                  and visited.get(new, 0) < MAX_REPEATS and len(visited) < MAX_REDIRECTS)
        if not follow:
            raise status_error(status, request.shown, retry_after)
        visited[new] = visited.get(new, 0) + 1
        same_origin = _same_origin(url, new)
        headers = tuple((k, v) for k, v in headers
                        if (name := k.decode().lower()) not in _BODY_HEADERS
                        and (same_origin or name not in CREDENTIAL_HEADERS))
        method, url, body = ("HEAD" if method == "HEAD" else "GET"), new, None


def _drain(response: httpx.Response) -> None:
    """Read a short unwanted body to its end, so that its connection can serve the next request."""
    import httpx

    size = 0
    try:
        for chunk in response.iter_raw():
            size += len(chunk)
            if size > DRAIN_BYTES:
                return  # closed, not reused
    except httpx.HTTPError:
        pass  # the answer is the status; a broken body changes nothing


def _redirect_target(current: str, location: str) -> str:
    """The absolute URL a ``Location`` names, quoted and joined as urllib does."""
    parts = urllib.parse.urlparse(location)
    if not parts.path and parts.netloc:
        parts = parts._replace(path="/")
    quoted = urllib.parse.quote(urllib.parse.urlunparse(parts), encoding="iso-8859-1",
                                safe=string.punctuation)
    return urllib.parse.urljoin(current, quoted)


def _same_origin(a: str, b: str) -> bool:
    first, second = urllib.parse.urlsplit(a), urllib.parse.urlsplit(b)
    return (first.scheme, first.netloc) == (second.scheme, second.netloc)


def _read(response: httpx.Response) -> Answer:
    """The answer, its body read up to one chunk past MAX_BODY_BYTES."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            break
    found = response.headers.get_list("content-type")
    media = email.message.Message()
    if found:
        media["Content-Type"] = found[0]
    return Answer(response.status_code, media.get_content_type(),
                  media.get_content_charset() or "utf-8", b"".join(chunks))


def _reason(exc: BaseException) -> str:
    """What went wrong, named by the socket's error when httpx wraps one (``gaierror: ...``)."""
    reason, cause = exc, exc.__cause__ or exc.__context__
    for _ in range(8):  # a chain is short; never follow a cycle forever
        if cause is None:
            break
        if isinstance(cause, OSError):
            reason = cause
        cause = cause.__cause__ or cause.__context__
    text = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
    return text[:200]


def decode(body: bytes, content_type: str, charset: str) -> tuple[Any, bool]:
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


_lock = threading.Lock()
_shared: httpx.Client | None = None


def _forget_client() -> None:
    """In a forked child: drop the parent's client (its connections belong to the parent)."""
    global _lock, _shared
    _lock = threading.Lock()
    _shared = None


os.register_at_fork(after_in_child=_forget_client)


def client() -> httpx.Client:
    """This process's client, built on first use and shared by every thread."""
    global _shared
    shared = _shared
    if shared is not None:
        return shared
    with _lock:
        if _shared is None:
            _shared = _new_client()
        return _shared


def _new_client() -> httpx.Client:
    import http.cookiejar
    import ssl

    import httpx

    no_cookies = http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
    return httpx.Client(
        verify=ssl.create_default_context(),  # the system's store, as urllib used
        cookies=http.cookiejar.CookieJar(no_cookies),  # one caller's cookies are no other's
        limits=httpx.Limits(max_connections=None,
                            max_keepalive_connections=KEEPALIVE_CONNECTIONS),
        follow_redirects=False, trust_env=True)
