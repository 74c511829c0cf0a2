"""The guard's Redis as a user writes it: a URL, and ``telemetry_guard_redis_options``.

URLs: ``redis://``, ``rediss://`` (TLS), ``unix://``, with ACL ``user:password@``; and
Sentinel in kombu's form, ``sentinel://host:26379;sentinel://host2:26379`` (a password in
the URL is the master's, as in kombu). The options are redis-py's own keyword names
(``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ``socket_timeout``,
...), plus ``master_name`` and ``sentinel_kwargs`` for Sentinel and ``cluster: True`` for
Redis Cluster (the URL then names any node). Everything here is checked before a client is
built: a wrong setting is a clear error at start-up, not a failing writer thread later.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import unquote, urlsplit

#: The URL schemes the guard's Redis may use.
SCHEMES = ("redis", "rediss", "unix", "sentinel")
#: Options that are the guard's, not a redis-py keyword.
OWN_OPTIONS = frozenset({"cluster", "master_name", "sentinel_kwargs"})
#: redis-py keywords the guard cannot work with: it reads replies as bytes, in RESP2.
REFUSED_OPTIONS = {
    "decode_responses": "the guard reads Redis replies as bytes",
    "encoding": "the guard reads Redis replies as bytes",
    "protocol": "the guard speaks RESP2 to its Redis",
    "connection_pool": "the guard builds its own pools (one per process, rebuilt after fork)",
    "host": "name the server in telemetry_guard_redis_url",
    "port": "name the server in telemetry_guard_redis_url",
    "url": "use telemetry_guard_redis_url",
}
_PASSWORD_PARAM = re.compile(r"([?&;]password=)[^&;#]*", re.IGNORECASE)


class RedisOptionsError(ValueError):
    """``telemetry_guard_redis_url`` or ``telemetry_guard_redis_options`` cannot be used."""


@dataclass(frozen=True)
class RedisTarget:
    """A checked URL and its options: everything needed to build a client for them."""

    url: str
    options: Mapping[str, Any]

    @property
    def mode(self) -> str:
        """``standalone``, ``sentinel`` or ``cluster``."""
        if self.url.startswith("sentinel://"):
            return "sentinel"
        return "cluster" if self.options.get("cluster") else "standalone"

    @property
    def key(self) -> str:
        """The URL and options as one text: equal targets share a client (a URL without
        options is its own key, registered or not)."""
        if not self.options:
            return self.url
        return self.url + "\0" + json.dumps(self.options, sort_keys=True, default=repr)

    def client_kwargs(self) -> dict[str, Any]:
        """The options that are redis-py keywords (the guard's own taken out)."""
        return {k: v for k, v in self.options.items() if k not in OWN_OPTIONS}

    def sentinels(self) -> list[tuple[str, int]]:
        """The sentinels' addresses named by a ``sentinel://`` URL."""
        return [(part.hostname or "localhost", part.port or 26379) for part in _parts(self.url)]

    def sentinel_master_kwargs(self) -> dict[str, Any]:
        """The master's password, user and db, as a sentinel URL gives them."""
        found: dict[str, Any] = {}
        for part in _parts(self.url):
            if part.password and "password" not in found:
                found["password"] = unquote(part.password)
                if part.username:
                    found["username"] = unquote(part.username)
            db = part.path.strip("/")
            if db and "db" not in found:
                found["db"] = int(db)
        return found


def check_redis_target(url: str, options: Mapping[str, Any] | None) -> RedisTarget:
    """``url`` and ``options`` checked together; RedisOptionsError names what is wrong."""
    if not isinstance(url, str) or "://" not in url:
        raise RedisOptionsError(f"telemetry_guard_redis_url must be a URL, got {url!r}")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise RedisOptionsError(
            f"telemetry_guard_redis_url: scheme {scheme!r} is not one of "
            f"{', '.join(s + '://' for s in SCHEMES)}")
    checked = check_redis_options(options)
    if scheme == "sentinel":
        _check_sentinel_url(url)
        if not checked.get("master_name"):
            raise RedisOptionsError(
                "a sentinel:// URL needs telemetry_guard_redis_options "
                "{'master_name': '<the monitored master>'}")
        if checked.get("cluster"):
            raise RedisOptionsError("cluster: True cannot be used with a sentinel:// URL")
    else:
        for name in ("master_name", "sentinel_kwargs"):
            if name in checked:
                raise RedisOptionsError(f"telemetry_guard_redis_options {name!r} needs a "
                                        "sentinel:// URL")
        if ";" in url:
            raise RedisOptionsError("only sentinel:// URLs may list several servers "
                                    "(separated by ';')")
    if checked.get("cluster") and scheme == "unix":
        raise RedisOptionsError("cluster: True needs a redis:// or rediss:// node URL")
    return RedisTarget(url, checked)


def check_redis_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``telemetry_guard_redis_options`` checked: a dict of known redis-py keyword names."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise RedisOptionsError("telemetry_guard_redis_options must be a dict of redis-py "
                                f"keyword arguments, got {type(options).__name__}")
    checked = dict(options)
    bad_names = [k for k in checked if not isinstance(k, str)]
    if bad_names:
        raise RedisOptionsError(f"telemetry_guard_redis_options: keys must be text, got "
                                f"{bad_names!r}")
    for name, why in REFUSED_OPTIONS.items():
        if name in checked:
            raise RedisOptionsError(f"telemetry_guard_redis_options {name!r} is not "
                                    f"allowed: {why}")
    cluster = checked.get("cluster", False)
    if not isinstance(cluster, bool):
        raise RedisOptionsError(f"telemetry_guard_redis_options 'cluster' must be True or "
                                f"False, got {cluster!r}")
    if not cluster:
        checked.pop("cluster", None)
    master = checked.get("master_name")
    if master is not None and not (isinstance(master, str) and master):
        raise RedisOptionsError(f"telemetry_guard_redis_options 'master_name' must be a "
                                f"name, got {master!r}")
    sentinel_kwargs = checked.get("sentinel_kwargs")
    if sentinel_kwargs is not None:
        if not isinstance(sentinel_kwargs, Mapping):
            raise RedisOptionsError("telemetry_guard_redis_options 'sentinel_kwargs' must be "
                                    "a dict of redis-py keyword arguments")
        _check_known(dict(sentinel_kwargs), "sentinel_kwargs", cluster=False)
        checked["sentinel_kwargs"] = dict(sentinel_kwargs)
    _check_known({k: v for k, v in checked.items() if k not in OWN_OPTIONS},
                 "telemetry_guard_redis_options", cluster=cluster)
    return checked


def _check_known(options: dict[str, Any], where: str, *, cluster: bool) -> None:
    unknown = sorted(set(options) - known_keywords(cluster))
    if unknown:
        raise RedisOptionsError(
            f"{where}: unknown redis-py keyword(s) {', '.join(unknown)} (e.g. ssl_ca_certs, "
            "ssl_certfile, ssl_keyfile, ssl_cert_reqs, socket_timeout, username, password)")


@cache
def known_keywords(cluster: bool) -> frozenset[str]:
    """The keyword names redis-py's clients and connections accept."""
    import redis
    from redis.connection import AbstractConnection, SSLConnection

    sources: list[Any] = [redis.Redis.__init__, AbstractConnection.__init__,
                          SSLConnection.__init__]
    if cluster:
        from redis.cluster import RedisCluster
        sources.append(RedisCluster.__init__)
    names = {name for source in sources
             for name, p in inspect.signature(source).parameters.items()
             if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self"}
    return frozenset(names)


def _parts(url: str) -> list[Any]:
    return [urlsplit(part.strip()) for part in url.split(";") if part.strip()]


def _check_sentinel_url(url: str) -> None:
    for text in (p.strip() for p in url.split(";")):
        if not text:
            continue
        part = urlsplit(text)
        if part.scheme.lower() != "sentinel" or not part.hostname:
            raise RedisOptionsError(
                "a sentinel URL lists sentinels as 'sentinel://host:port', separated by ';' "
                f"(as kombu writes it); got {mask_url(text)!r}")
        try:
            part.port  # noqa: B018 (raises on a bad port)
        except ValueError:
            raise RedisOptionsError(f"bad port in {mask_url(text)!r}") from None
        db = part.path.strip("/")
        if db and not db.isdigit():
            raise RedisOptionsError(f"the db in {mask_url(text)!r} must be a number")


def mask_url(url: str | None) -> str | None:
    """``url`` with user information and ``password=`` parameters replaced by ``***``
    (each URL of a sentinel list)."""
    if not url:
        return url
    if not url.lower().startswith("sentinel://"):
        return _mask_one(url)
    return ";".join(_mask_one(part) for part in url.split(";"))


def _mask_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    tail = _PASSWORD_PARAM.sub(r"\1***", tail)
    return f"{scheme}://{netloc}{slash}{tail}"
