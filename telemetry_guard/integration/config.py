"""Settings: the only reader of ``app.conf`` and ``TELEMETRY_GUARD_*`` variables.

Precedence, highest first: keyword arguments to ``TelemetryGuard(app, ...)``,
the environment variable ``TELEMETRY_GUARD_<KEY>``, the ``app.conf`` key
``telemetry_guard_<key>``, the default below.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.brokers import broker_redis_options, default_redelivery_horizon, redis_url_of
from ..core.channels import EMAIL, SENTRY
from ..core.policy import RetryPolicy, policy_from_setting
from ..core.redact import DEFAULT_REDACT_KEYS, parse_redact_keys
from ..sinks.metrics import BACKENDS as METRICS_BACKENDS
from ..stores.budget import BudgetConfig
from ..stores.redis_options import check_redis_options, check_redis_target

CONF_PREFIX = "telemetry_guard_"
ENV_PREFIX = "TELEMETRY_GUARD_"

DEFAULT_ROUTES: dict[str, tuple[str, ...]] = {
    "low": (),
    "medium": (),
    "high": (SENTRY,),
    "critical": (SENTRY, EMAIL),
}

#: ``telemetry_guard_sentry_fingerprint``: how Sentry groups the failures the guard reports.
SENTRY_FINGERPRINTS = ("default", "task_exception")

@dataclass(frozen=True)
class Settings:
    """Everything ``TelemetryGuard`` reads, resolved once."""

    redis_url: str | None = None
    redis_options: Mapping[str, Any] = field(default_factory=dict)
    key_prefix: str = "telemetry_guard:"
    error_log_maxlen: int = 10_000
    dead_letter_maxlen: int = 100_000
    error_log_buffer: int = 10_000
    error_log_flush_interval: float = 0.2
    default_retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    routes: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_ROUTES))
    sentry_dsn: str | None = None
    email: Mapping[str, Any] = field(default_factory=dict)
    notification_queue: str = "telemetry_guard.notifications"
    notification_throttle: float = 600.0
    metrics_port: int | None = None
    metrics_address: str = "0.0.0.0"
    max_label_values: int = 500
    redact_keys: tuple[str, ...] | re.Pattern[str] = DEFAULT_REDACT_KEYS
    max_value_chars: int = 2048
    max_record_bytes: int = 32_768
    redact_celery_logs: bool = True
    tracing: bool = True
    redelivery_horizon: float | None = None
    breaker_max_wait: float = 3600.0
    retry_budget: BudgetConfig | None = None
    observe_all_tasks: bool = True
    sentry_fingerprint: str = "default"
    metrics: str = "prometheus"
    periodic_monitoring: bool = True
    periodic_tolerance: float = 1.5
    beat_heartbeat_interval: float = 10.0
    beat_metrics_port: int | None = None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Every setting's name, without prefix."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def check_overrides(cls, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword settings, checked without reading ``app.conf``: unknown names and bad
        values are errors now, not when the app is configured."""
        overrides = dict(overrides)
        names = cls.field_names()
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise TypeError(
                f"unknown telemetry_guard setting(s) {', '.join(unknown)}; "
                f"valid: {', '.join(names)}"
            )
        checked = {name: _coerce(name, raw, "keyword argument")
                   for name, raw in overrides.items()}
        if checked.get("retry_budget") is not None and "redis_url" in checked:
            check_budget_has_redis(checked["retry_budget"], checked["redis_url"])
        return overrides

    @classmethod
    def from_app(
        cls, app: Any, overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Resolve settings for ``app`` from keyword overrides, environment and ``app.conf``."""
        overrides = cls.check_overrides(overrides or {})
        environ = os.environ if environ is None else environ
        conf = app.conf
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            env_name = ENV_PREFIX + f.name.upper()
            if f.name in overrides:
                raw, source = overrides[f.name], "keyword argument"
            elif env_name in environ:
                raw, source = _parse_env(f.name, environ[env_name]), env_name
            else:
                key = CONF_PREFIX + f.name
                if key not in conf:
                    continue
                value = conf.get(key)
                raw, source = value, f"app.conf.{key}"
            values[f.name] = _coerce(f.name, raw, source)
        if "redis_url" not in values:  # an explicit None (keyword, env "none") turns it off
            values["redis_url"] = redis_url_of(conf.broker_url)
            if values["redis_url"] and "redis_options" not in values:
                values["redis_options"] = broker_redis_options(conf)
                if (values["redis_url"].startswith("sentinel://")
                        and "master_name" not in values["redis_options"]):
                    values["redis_url"] = None  # kombu's transport cannot use it either
        if values.get("redis_url"):
            try:
                target = check_redis_target(values["redis_url"], values.get("redis_options"))
            except ValueError as exc:
                raise ValueError(f"telemetry_guard Redis: {exc}") from None
            values["redis_options"] = dict(target.options)
        if values.get("redelivery_horizon") is None:
            values["redelivery_horizon"] = _redelivery_horizon(conf)
        return cls(**values)


def check_budget_has_redis(budget: Any, redis_url: str | None) -> None:
    """The retry budget is shared by all workers in Redis: it needs a Redis URL."""
    if budget is not None and not redis_url:
        raise ValueError("telemetry_guard_retry_budget needs telemetry_guard_redis_url "
                         "(the budget is shared by all workers in Redis)")


def _parse_env(name: str, text: str) -> Any:
    """Turn an environment string into a value; JSON for structured settings."""
    if name in ("routes", "email", "default_retry_policy", "retry_budget", "redis_options"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}{name.upper()} must be JSON: {exc}") from None
    if text.strip().lower() in ("", "none", "null"):
        return None
    return text


def _coerce(name: str, raw: Any, source: str) -> Any:
    """Check and convert one value, naming where it came from when it is wrong."""
    try:
        if name in ("error_log_maxlen", "dead_letter_maxlen", "error_log_buffer",
                    "max_label_values", "max_value_chars", "max_record_bytes"):
            value = _whole_number(raw)
            if value <= 0:
                raise ValueError("must be a positive integer")
            return value
        if name in ("metrics_port", "beat_metrics_port"):
            if raw is None:
                return None
            port = _whole_number(raw)
            if not 0 <= port <= 65535:
                raise ValueError("must be a TCP port (0-65535)")
            return port
        if name in ("error_log_flush_interval", "notification_throttle", "redelivery_horizon",
                    "breaker_max_wait"):
            if raw is None:
                return None
            value = float(raw)
            if not math.isfinite(value) or value < 0:
                raise ValueError("must be a finite number >= 0")
            if name == "redelivery_horizon" and value == 0:
                raise ValueError("must be > 0 (seconds before the broker redelivers)")
            return value
        if name == "redact_keys":  # secret words: a list, "a, b" or a JSON list; "re:..."
            if raw is None:
                return DEFAULT_REDACT_KEYS
            if isinstance(raw, str) and raw.lstrip().startswith("["):
                raw = json.loads(raw)
            return parse_redact_keys(raw)
        if name in ("periodic_tolerance", "beat_heartbeat_interval") and isinstance(raw, bool):
            raise ValueError(f"must be a number, not {raw!r}")
        if name == "periodic_tolerance":
            value = float(raw)
            if not math.isfinite(value) or value <= 1:
                raise ValueError("must be a number > 1 (missed after interval x tolerance)")
            return value
        if name == "beat_heartbeat_interval":
            value = float(raw)
            if not math.isfinite(value) or value <= 0:
                raise ValueError("must be a number of seconds > 0")
            return value
        if name in ("tracing", "redact_celery_logs", "observe_all_tasks", "periodic_monitoring"):
            if isinstance(raw, str):
                return raw.strip().lower() in ("1", "true", "yes", "on")
            return bool(raw)
        if name == "default_retry_policy":
            return policy_from_setting(raw)
        if name == "routes":
            return _routes(raw)
        if name == "retry_budget":
            return BudgetConfig.from_setting(raw)
        if name == "sentry_fingerprint":
            mode = "default" if raw is None else str(raw).strip().lower()
            if mode not in SENTRY_FINGERPRINTS:
                raise ValueError(f"must be one of {', '.join(SENTRY_FINGERPRINTS)}, not {raw!r}")
            return mode
        if name == "metrics":
            backend = "prometheus" if raw is None else str(raw).strip().lower()
            if backend not in METRICS_BACKENDS:
                raise ValueError(f"must be one of {', '.join(METRICS_BACKENDS)}, not {raw!r}")
            return backend
        if name == "redis_options":
            return check_redis_options(raw)
        if name == "email":
            if not isinstance(raw, Mapping):
                raise ValueError("must be a dict of host, port, starttls, ssl, user, ...")
            return dict(raw)
        return None if raw is None else str(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"telemetry_guard setting {name!r} from {source}: {exc}") from None


def _whole_number(raw: Any) -> int:
    """An int from an int, a whole float or a numeric string; never silently truncated."""
    if isinstance(raw, bool):
        raise ValueError(f"must be an integer, not {raw!r}")
    if isinstance(raw, float):
        if not raw.is_integer():
            raise ValueError(f"must be an integer, not {raw!r}")
        return int(raw)
    return int(raw)


def _routes(raw: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, Mapping):
        raise ValueError("must map severity names to lists of sinks")
    routes = dict(DEFAULT_ROUTES)
    for severity, sinks in raw.items():
        key = str(severity).lower()
        if key not in DEFAULT_ROUTES:
            raise ValueError(f"unknown severity {severity!r}; valid: {', '.join(DEFAULT_ROUTES)}")
        if isinstance(sinks, str):
            sinks = [sinks]
        routes[key] = tuple(str(s) for s in sinks)
    return routes


def _redelivery_horizon(conf: Any) -> float | None:
    """The broker's redelivery horizon in seconds, when it has one."""
    options = conf.get("broker_transport_options") or {}
    if "visibility_timeout" in options:
        return _coerce("redelivery_horizon", options["visibility_timeout"],
                       "app.conf.broker_transport_options['visibility_timeout']")  # type: ignore[no-any-return]
    return default_redelivery_horizon(conf.broker_url)
