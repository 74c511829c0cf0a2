"""What the guard knows of Celery's broker transports, by URL scheme."""

from __future__ import annotations

from typing import Any

REDIS_SCHEMES = frozenset({"redis", "rediss", "sentinel", "redis+socket"})
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp", "librabbitmq"})
#: Broker URLs that are plain Redis URLs, usable as the guard's own Redis.
PLAIN_REDIS_SCHEMES = frozenset({"redis", "rediss"})

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
    """The broker's URL when it is a plain Redis one (the first of a failover list)."""
    if isinstance(broker_url, str) and broker_url.split("://", 1)[0] in PLAIN_REDIS_SCHEMES:
        return broker_url.split(";", 1)[0]
    return None


def default_redelivery_horizon(broker_url: Any) -> float | None:
    """The transport's default redelivery horizon in seconds; None when it has none."""
    if not broker_url:
        return None
    return DEFAULT_REDELIVERY_HORIZONS.get(str(broker_url).split("://", 1)[0].split("+")[0])
