"""What the guard knows of Celery's broker transports, by URL scheme."""

from __future__ import annotations

from typing import Any

REDIS_SCHEMES = frozenset({"redis", "rediss", "sentinel", "redis+socket"})
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp", "librabbitmq"})
#: Broker URLs usable as the guard's own Redis (a Sentinel one with its ``master_name``).
GUARD_REDIS_SCHEMES = frozenset({"redis", "rediss", "sentinel"})
#: The broker's TLS and Sentinel settings that are redis-py keywords of the guard's client.
_SSL_KEYS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")

#: Seconds before an unacknowledged message is delivered again, per transport.
DEFAULT_REDELIVERY_HORIZONS: dict[str, float] = {
    "redis": 3600.0,
    "rediss": 3600.0,
    "sentinel": 3600.0,
    "amqp": 1800.0,
    "amqps": 1800.0,
    "pyamqp": 1800.0,
    "sqs": 1800.0,
}


def broker_scheme(broker_url: Any) -> str:
    """The transport name of a broker URL (``amqp`` when none is set, as in Celery)."""
    if isinstance(broker_url, (list, tuple)):
        broker_url = broker_url[0] if broker_url else None
    if not broker_url:
        return "amqp"
    return str(broker_url).split(";", 1)[0].split("://", 1)[0].lower()


def redis_url_of(broker_url: Any) -> str | None:
    """The broker's URL when it is a Redis one (a plain one: the first of a failover list;
    a Sentinel one: all its sentinels)."""
    if not isinstance(broker_url, str):
        return None
    scheme = broker_url.split("://", 1)[0].lower()
    if scheme not in GUARD_REDIS_SCHEMES:
        return None
    return broker_url if scheme == "sentinel" else broker_url.split(";", 1)[0]


def broker_redis_options(conf: Any) -> dict[str, Any]:
    """The broker's own TLS and Sentinel settings, as the guard's ``redis_options``: for a
    guard that uses the broker's Redis (``broker_use_ssl``, and ``master_name`` and
    ``sentinel_kwargs`` from ``broker_transport_options``)."""
    options: dict[str, Any] = {}
    transport = conf.get("broker_transport_options") or {}
    if str(conf.broker_url or "").lower().startswith("sentinel://"):
        for name in ("master_name", "sentinel_kwargs"):
            if transport.get(name) is not None:
                options[name] = transport[name]
    use_ssl = conf.get("broker_use_ssl")
    if isinstance(use_ssl, dict):
        options.update({k: v for k, v in use_ssl.items() if k in _SSL_KEYS})
    return options


def default_redelivery_horizon(broker_url: Any) -> float | None:
    """The transport's default redelivery horizon in seconds; None when it has none."""
    if not broker_url:
        return None
    return DEFAULT_REDELIVERY_HORIZONS.get(str(broker_url).split("://", 1)[0].split("+")[0])
