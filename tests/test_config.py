"""Tests for the guard's Settings: Settings.from_app, its precedence, parsing and errors."""

from __future__ import annotations

import json

import pytest
from celery import Celery

from telemetry_guard.core.policy import RetryPolicy
from telemetry_guard.core.redact import DEFAULT_REDACT_KEYS
from telemetry_guard.integration.config import DEFAULT_ROUTES, Settings

BROKER = "redis://127.0.0.1:1/0"


def make_app(broker: str | None = BROKER, **conf: object) -> Celery:
    """A Celery app that is never connected, with ``conf`` applied."""
    app = Celery("x", broker=broker, set_as_current=False)
    app.conf.update(conf)
    return app


def test_defaults_when_nothing_is_configured() -> None:
    """With no keyword, variable or app.conf key every setting has its documented default."""
    s = Settings.from_app(make_app(), {}, {})
    assert s.key_prefix == "telemetry_guard:"
    assert s.error_log_maxlen == 10_000
    assert s.default_retry_policy == RetryPolicy()
    assert s.default_retry_policy.retry_on == (ConnectionError, TimeoutError)
    assert s.default_retry_policy.max_retries == 3
    assert dict(s.routes) == DEFAULT_ROUTES
    assert s.sentry_dsn is None
    assert dict(s.email) == {}
    assert s.notification_queue == "telemetry_guard.notifications"
    assert s.notification_throttle == 600.0
    assert s.metrics_port is None
    assert s.max_label_values == 500
    assert s.redact_keys == DEFAULT_REDACT_KEYS
    assert s.tracing is True


def test_keyword_beats_environment_beats_app_conf() -> None:
    """A keyword wins over TELEMETRY_GUARD_<KEY>, which wins over app.conf.telemetry_guard_<key>."""
    app = make_app(telemetry_guard_key_prefix="conf:")
    env = {"TELEMETRY_GUARD_KEY_PREFIX": "env:"}
    assert Settings.from_app(app, {"key_prefix": "kw:"}, env).key_prefix == "kw:"
    assert Settings.from_app(app, {}, env).key_prefix == "env:"
    assert Settings.from_app(app, {}, {}).key_prefix == "conf:"
    assert Settings.from_app(make_app(), {}, {}).key_prefix == "telemetry_guard:"


def test_environment_beats_app_conf_for_numbers_and_converts_them() -> None:
    """An environment string is converted to the setting's type and wins over app.conf."""
    app = make_app(telemetry_guard_error_log_maxlen=50, telemetry_guard_metrics_port=9100)
    env = {"TELEMETRY_GUARD_ERROR_LOG_MAXLEN": "70", "TELEMETRY_GUARD_NOTIFICATION_THROTTLE": "2.5"}
    s = Settings.from_app(app, {}, env)
    assert s.error_log_maxlen == 70
    assert s.notification_throttle == 2.5
    assert s.metrics_port == 9100


def test_environment_tracing_flag_is_read_as_a_boolean() -> None:
    """TELEMETRY_GUARD_TRACING accepts false/0/true/yes spellings."""
    app = make_app()
    assert Settings.from_app(app, {}, {"TELEMETRY_GUARD_TRACING": "false"}).tracing is False
    assert Settings.from_app(app, {}, {"TELEMETRY_GUARD_TRACING": "0"}).tracing is False
    assert Settings.from_app(app, {}, {"TELEMETRY_GUARD_TRACING": "yes"}).tracing is True


def test_redis_url_defaults_to_a_redis_broker_url() -> None:
    """With no redis_url set, a redis:// or rediss:// broker URL is used."""
    assert Settings.from_app(make_app(), {}, {}).redis_url == BROKER
    tls = "rediss://:pw@cache.example:6380/2"
    assert Settings.from_app(make_app(tls), {}, {}).redis_url == tls


def test_redis_url_has_no_default_for_a_non_redis_broker() -> None:
    """An amqp:// or memory:// broker gives no redis_url."""
    assert Settings.from_app(make_app("amqp://guest@localhost//"), {}, {}).redis_url is None
    assert Settings.from_app(make_app("memory://"), {}, {}).redis_url is None


def test_explicit_redis_url_wins_over_the_broker_url() -> None:
    """A redis_url from app.conf is used instead of the broker URL."""
    app = make_app(telemetry_guard_redis_url="redis://127.0.0.1:2/5")
    assert Settings.from_app(app, {}, {}).redis_url == "redis://127.0.0.1:2/5"


def test_redis_url_none_keyword_turns_the_error_log_off() -> None:
    """redis_url=None given as a keyword means no Redis, not the broker's Redis."""
    assert Settings.from_app(make_app(), {"redis_url": None}, {}).redis_url is None


def test_redis_url_none_in_environment_turns_the_error_log_off() -> None:
    """TELEMETRY_GUARD_REDIS_URL=none means no Redis, not the broker's Redis."""
    env = {"TELEMETRY_GUARD_REDIS_URL": "none"}
    assert Settings.from_app(make_app(), {}, env).redis_url is None


def test_redis_url_follows_a_broker_given_by_celery_broker_url(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker configured through CELERY_BROKER_URL (Celery's own variable) is honoured."""
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/3")
    app = Celery("x", set_as_current=False)
    assert app.conf.broker_url == "redis://127.0.0.1:1/3"
    s = Settings.from_app(app, {}, {})
    assert s.redis_url == "redis://127.0.0.1:1/3"
    assert s.redelivery_horizon == 3600.0


def test_routes_from_environment_json_merge_over_the_defaults() -> None:
    """TELEMETRY_GUARD_ROUTES is JSON; severities it names replace the default route."""
    env = {"TELEMETRY_GUARD_ROUTES": json.dumps({"MEDIUM": ["sentry"], "critical": "email"})}
    routes = Settings.from_app(make_app(), {}, env).routes
    assert routes == {"low": (), "medium": ("sentry",), "high": ("sentry",),
                      "critical": ("email",)}


def test_email_from_environment_json() -> None:
    """TELEMETRY_GUARD_EMAIL is a JSON object turned into a dict."""
    email = {"host": "smtp.example", "port": 2525, "recipients": ["ops@example.com"]}
    env = {"TELEMETRY_GUARD_EMAIL": json.dumps(email)}
    assert dict(Settings.from_app(make_app(), {}, env).email) == email


def test_default_retry_policy_from_environment_imports_dotted_exception_names() -> None:
    """retry_on accepts "builtins.ConnectionError" and bare builtin names like "TimeoutError"."""
    raw = {"max_retries": 7, "base_delay": 0.5, "max_delay": 30,
           "retry_on": ["builtins.ConnectionError", "TimeoutError"],
           "dont_retry_on": "ConnectionRefusedError"}
    env = {"TELEMETRY_GUARD_DEFAULT_RETRY_POLICY": json.dumps(raw)}
    policy = Settings.from_app(make_app(), {}, env).default_retry_policy
    assert policy == RetryPolicy(max_retries=7, base_delay=0.5, max_delay=30.0,
                                 retry_on=(ConnectionError, TimeoutError),
                                 dont_retry_on=(ConnectionRefusedError,))


def test_default_retry_policy_object_from_app_conf_is_kept() -> None:
    """A RetryPolicy in app.conf is used as it is."""
    policy = RetryPolicy(max_retries=1, retry_on=(KeyError,))
    app = make_app(telemetry_guard_default_retry_policy=policy)
    assert Settings.from_app(app, {}, {}).default_retry_policy is policy


def test_redelivery_horizon_from_visibility_timeout() -> None:
    """broker_transport_options["visibility_timeout"] sets the redelivery horizon."""
    app = make_app(broker_transport_options={"visibility_timeout": 100})
    assert Settings.from_app(app, {}, {}).redelivery_horizon == 100.0


@pytest.mark.parametrize(("broker", "horizon"), [
    ("redis://127.0.0.1:1/0", 3600.0),
    ("rediss://127.0.0.1:1/0", 3600.0),
    ("amqp://guest@localhost//", 1800.0),
    ("pyamqp://guest@localhost//", 1800.0),
    ("memory://", None),
])
def test_redelivery_horizon_defaults_per_broker_scheme(broker: str, horizon: float | None) -> None:
    """Without a visibility_timeout the horizon is the transport's default (memory has none)."""
    assert Settings.from_app(make_app(broker), {}, {}).redelivery_horizon == horizon


def test_redelivery_horizon_setting_wins_over_visibility_timeout() -> None:
    """An explicit redelivery_horizon keyword is used over the transport options."""
    app = make_app(broker_transport_options={"visibility_timeout": 100})
    assert Settings.from_app(app, {"redelivery_horizon": 50}, {}).redelivery_horizon == 50.0


def test_unknown_keyword_is_a_type_error_listing_valid_names() -> None:
    """A misspelt keyword raises TypeError naming it and every valid setting."""
    with pytest.raises(TypeError) as info:
        Settings.from_app(make_app(), {"redis_uri": "redis://x"}, {})
    message = str(info.value)
    assert "redis_uri" in message
    for name in Settings.field_names():
        assert name in message


def test_non_integer_error_log_maxlen_names_setting_and_source() -> None:
    """A non-number maxlen in app.conf raises ValueError naming the setting and the conf key."""
    app = make_app(telemetry_guard_error_log_maxlen="lots")
    with pytest.raises(ValueError) as info:
        Settings.from_app(app, {}, {})
    assert "error_log_maxlen" in str(info.value)
    assert "app.conf.telemetry_guard_error_log_maxlen" in str(info.value)


def test_fractional_error_log_maxlen_is_rejected_not_truncated() -> None:
    """A maxlen of 10.5 is not an integer and raises ValueError instead of becoming 10."""
    with pytest.raises(ValueError, match="error_log_maxlen"):
        Settings.from_app(make_app(), {"error_log_maxlen": 10.5}, {})


def test_zero_error_log_maxlen_from_environment_names_the_variable() -> None:
    """A non-positive maxlen from the environment names the variable it came from."""
    env = {"TELEMETRY_GUARD_ERROR_LOG_MAXLEN": "0"}
    with pytest.raises(ValueError, match="TELEMETRY_GUARD_ERROR_LOG_MAXLEN") as info:
        Settings.from_app(make_app(), {}, env)
    assert "error_log_maxlen" in str(info.value)


def test_negative_throttle_names_setting_and_keyword_source() -> None:
    """A negative notification_throttle keyword raises ValueError naming it as a keyword."""
    with pytest.raises(ValueError) as info:
        Settings.from_app(make_app(), {"notification_throttle": -1}, {})
    assert "notification_throttle" in str(info.value)
    assert "keyword argument" in str(info.value)


def test_port_out_of_range_names_setting_and_source() -> None:
    """metrics_port 70000 from the environment raises ValueError naming setting and variable."""
    env = {"TELEMETRY_GUARD_METRICS_PORT": "70000"}
    with pytest.raises(ValueError) as info:
        Settings.from_app(make_app(), {}, env)
    assert "metrics_port" in str(info.value)
    assert "TELEMETRY_GUARD_METRICS_PORT" in str(info.value)


def test_metrics_backend_defaults_to_prometheus_and_is_read_from_the_environment() -> None:
    """telemetry_guard_metrics: prometheus by default; the variable beats app.conf."""
    assert Settings.from_app(make_app(), {}, {}).metrics == "prometheus"
    app = make_app(telemetry_guard_metrics="both")
    assert Settings.from_app(app, {}, {}).metrics == "both"
    assert Settings.from_app(app, {}, {"TELEMETRY_GUARD_METRICS": "OTLP"}).metrics == "otlp"


def test_unknown_metrics_backend_names_setting_source_and_valid_values() -> None:
    """A backend the guard does not know is an error naming the setting and the choices."""
    with pytest.raises(ValueError) as info:
        Settings.from_app(make_app(telemetry_guard_metrics="statsd"), {}, {})
    assert "'metrics'" in str(info.value)
    assert "app.conf.telemetry_guard_metrics" in str(info.value)
    assert "prometheus, otlp, both" in str(info.value)
    with pytest.raises(ValueError, match="TELEMETRY_GUARD_METRICS"):
        Settings.from_app(make_app(), {}, {"TELEMETRY_GUARD_METRICS": "otel"})


def test_non_json_routes_in_environment_names_the_variable() -> None:
    """TELEMETRY_GUARD_ROUTES that is not JSON raises ValueError naming the variable."""
    env = {"TELEMETRY_GUARD_ROUTES": "high=sentry"}
    with pytest.raises(ValueError, match="TELEMETRY_GUARD_ROUTES") as info:
        Settings.from_app(make_app(), {}, env)
    assert "JSON" in str(info.value)


def test_unknown_severity_in_routes_names_setting_and_source() -> None:
    """A route for an unknown severity raises ValueError naming it, the setting and the key."""
    app = make_app(telemetry_guard_routes={"urgent": ["email"]})
    with pytest.raises(ValueError) as info:
        Settings.from_app(app, {}, {})
    message = str(info.value)
    assert "'urgent'" in message
    assert "routes" in message
    assert "app.conf.telemetry_guard_routes" in message


def test_unimportable_exception_class_names_setting_and_source() -> None:
    """A retry_on name that cannot be imported raises ValueError naming the class and source."""
    raw = {"retry_on": ["no_such_module_xyz.FlakyError"]}
    env = {"TELEMETRY_GUARD_DEFAULT_RETRY_POLICY": json.dumps(raw)}
    with pytest.raises(ValueError) as info:
        Settings.from_app(make_app(), {}, env)
    message = str(info.value)
    assert "no_such_module_xyz.FlakyError" in message
    assert "default_retry_policy" in message
    assert "TELEMETRY_GUARD_DEFAULT_RETRY_POLICY" in message


def test_missing_builtin_exception_name_is_a_value_error() -> None:
    """A bare name that is no builtin raises ValueError naming it."""
    policy = {"retry_on": "NoSuchError"}
    with pytest.raises(ValueError, match="NoSuchError"):
        Settings.from_app(make_app(), {"default_retry_policy": policy}, {})


@pytest.mark.parametrize("horizon", ["0", "nan"])
def test_unusable_redelivery_horizon_is_rejected_when_read(horizon: str) -> None:
    """A horizon that cap_below_horizon would refuse at retry time is refused by Settings."""
    env = {"TELEMETRY_GUARD_REDELIVERY_HORIZON": horizon}
    with pytest.raises(ValueError, match="redelivery_horizon"):
        Settings.from_app(make_app(), {}, env)
