"""The errors of ``resilient_request``, one for each way a request can fail.

    Exception
    ├── HTTPStatusError             a non-2xx answer: ``status``, ``url``, ``retry_after``
    │   ├── HTTPClientError         4xx but 429 (or an unfollowed 3xx): never retried;
    │   │                           a success for the host's breaker
    │   └── TransientHTTPError      5xx and 429: retried, honouring ``Retry-After``
    ├── HTTPConnectionError         (a ConnectionError) the host could not be reached
    └── HTTPTimeoutError            (a TimeoutError) no answer within ``timeout``

Their public home is :mod:`telemetry_guard.http` (``__module__`` says so): that is the
module pickles, Celery's result backend, events and the classifier name them by.
"""

from __future__ import annotations

#: The module the errors are imported from, and named by.
PUBLIC_MODULE = "telemetry_guard.http"


class HTTPStatusError(Exception):
    """The server answered with a non-2xx status (``url`` has no userinfo, query or fragment)."""

    __module__ = PUBLIC_MODULE

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

    __module__ = PUBLIC_MODULE


class TransientHTTPError(HTTPStatusError):
    """5xx, or 429 Too Many Requests: the server may answer later (see ``retry_after``)."""

    __module__ = PUBLIC_MODULE


class HTTPConnectionError(ConnectionError):
    """The host could not be reached, or dropped the connection (``reason`` says how)."""

    __module__ = PUBLIC_MODULE

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

    __module__ = PUBLIC_MODULE

    def __init__(self, url: str, timeout: float) -> None:
        super().__init__(url, timeout)
        self.url = url
        self.timeout = timeout

    def __str__(self) -> str:
        return f"no answer from {self.url} within {self.timeout:g}s"

    def __reduce__(self) -> tuple[type[HTTPTimeoutError], tuple[str, float]]:
        return (type(self), (self.url, self.timeout))


def status_error(status: int, url: str, retry_after: float | None = None) -> HTTPStatusError:
    """The exception for a non-2xx ``status``: transient for 5xx and 429, else a client error."""
    transient = status >= 500 or status == 429
    return (TransientHTTPError if transient else HTTPClientError)(status, url, retry_after)
