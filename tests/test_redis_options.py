"""The guard's Redis settings: URLs and options checked at start-up, keys in one slot each."""

from __future__ import annotations

import ssl

import pytest
from celery import Celery
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from telemetry_guard.breaker.redis_hash import breaker_keys, breaker_name_of
from telemetry_guard.integration.config import Settings
from telemetry_guard.stores.dead_letters import claims_key
from telemetry_guard.stores.keys import index_key, indexed_since_key, writer_key
from telemetry_guard.stores.redis_options import (
    RedisOptionsError,
    check_redis_target,
    mask_url,
)

SENTINELS = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379;sentinel://10.0.0.3:26379"


def app(**conf: object) -> Celery:
    celery = Celery("t", set_as_current=False)
    celery.conf.update(conf)
    return celery


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/2", "rediss://cache.example:6380/0",
    "redis://guard:s3cret@127.0.0.1:6379", "unix:///run/redis.sock?db=3"])
def test_single_server_urls_are_accepted(url: str) -> None:
    assert check_redis_target(url, None).mode == "standalone"


def test_a_sentinel_url_names_every_sentinel_and_the_masters_password_and_db() -> None:
    target = check_redis_target(
        "sentinel://:pw@10.0.0.1:26379/4;sentinel://10.0.0.2:26380", {"master_name": "m"})
    assert target.mode == "sentinel"
    assert target.sentinels() == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    assert target.sentinel_master_kwargs() == {"password": "pw", "db": 4}


@pytest.mark.parametrize(("url", "options", "says"), [
    (SENTINELS, None, "master_name"),
    (SENTINELS, {"master_name": "m", "cluster": True}, "cluster"),
    ("redis://h:1", {"master_name": "m"}, "sentinel://"),
    ("redis://h:1;redis://h:2", None, "several servers"),
    ("memcached://h:1", None, "scheme"),
    ("localhost:6379", None, "must be a URL"),
    ("sentinel://h:1;redis://h:2", {"master_name": "m"}, "sentinel://host:port"),
    ("sentinel://h:1/x", {"master_name": "m"}, "db"),
    ("redis://h:1", {"cluster": "yes"}, "True or False"),
    ("redis://h:1", {"ssl_ca_cert": "/ca.pem"}, "ssl_ca_cert"),
    ("redis://h:1", {"decode_responses": True}, "bytes"),
    ("redis://h:1", {"read_from_replicas": True}, "read_from_replicas"),
    ("redis://h:1", ["ssl_ca_certs"], "dict"),
    (SENTINELS, {"master_name": "m", "sentinel_kwargs": {"pasword": "x"}}, "pasword"),
    ("unix:///s.sock", {"cluster": True}, "node URL"),
])
def test_a_setting_that_cannot_work_is_a_clear_error(url: str, options: object,
                                                     says: str) -> None:
    with pytest.raises(RedisOptionsError, match=says):
        check_redis_target(url, options)  # type: ignore[arg-type]


def test_cluster_keywords_are_accepted_with_cluster_only() -> None:
    target = check_redis_target("redis://h:1", {"cluster": True, "read_from_replicas": True})
    assert target.mode == "cluster"
    assert target.client_kwargs() == {"read_from_replicas": True}


def test_settings_read_options_from_conf_and_environment() -> None:
    tls = {"ssl_ca_certs": "/etc/ca.pem", "ssl_cert_reqs": "required"}
    s = Settings.from_app(app(telemetry_guard_redis_url="rediss://h:6380",
                              telemetry_guard_redis_options=tls), environ={})
    assert (s.redis_url, dict(s.redis_options)) == ("rediss://h:6380", tls)
    s = Settings.from_app(app(), environ={
        "TELEMETRY_GUARD_REDIS_URL": "redis://h:1",
        "TELEMETRY_GUARD_REDIS_OPTIONS": '{"cluster": true}'})
    assert dict(s.redis_options) == {"cluster": True}
    with pytest.raises(ValueError, match="telemetry_guard Redis: a sentinel:// URL needs"):
        Settings.from_app(app(telemetry_guard_redis_url=SENTINELS), environ={})
    with pytest.raises(ValueError, match="TELEMETRY_GUARD_REDIS_OPTIONS must be JSON"):
        Settings.from_app(app(), environ={"TELEMETRY_GUARD_REDIS_OPTIONS": "{bad"})


def test_a_sentinel_or_tls_broker_is_the_default_with_its_own_settings() -> None:
    s = Settings.from_app(app(broker_url=SENTINELS, broker_transport_options={
        "master_name": "mymaster", "sentinel_kwargs": {"password": "sp"},
        "visibility_timeout": 60}), environ={})
    assert s.redis_url == SENTINELS
    assert dict(s.redis_options) == {"master_name": "mymaster",
                                     "sentinel_kwargs": {"password": "sp"}}
    s = Settings.from_app(app(broker_url="rediss://h:6380/0", broker_use_ssl={
        "ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"}), environ={})
    assert dict(s.redis_options) == {"ssl_cert_reqs": ssl.CERT_REQUIRED,
                                     "ssl_ca_certs": "/ca.pem"}
    # kombu itself cannot use a sentinel broker without master_name: the guard has no Redis
    assert Settings.from_app(app(broker_url=SENTINELS), environ={}).redis_url is None


def test_passwords_are_masked_in_every_url_of_a_sentinel_list() -> None:
    masked = mask_url("sentinel://:pw1@h1:26379;sentinel://u:pw2@h2:26379/0")
    assert masked == "sentinel://***@h1:26379;sentinel://***@h2:26379/0"
    assert mask_url("unix://:pw@/run/redis.sock?password=pw") == \
        "unix://***@/run/redis.sock?password=***"


@given(st.text(min_size=1).filter(lambda n: not n.startswith("}")),
       st.sampled_from(["telemetry_guard:", "tg:", "{tenant}:", "a{b:"]))
def test_a_breakers_three_keys_share_one_cluster_slot(name: str, prefix: str) -> None:
    keys = breaker_keys(prefix, name)
    assert len({key_slot(k) for k in keys}) == 1
    if "{" not in prefix:
        assert breaker_name_of(prefix, keys[0].decode()) == name


@pytest.mark.parametrize("name", ["", "}", "}payments"])
def test_a_breaker_name_that_is_no_hash_tag_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="hash tag"):
        breaker_keys("telemetry_guard:", name)


@given(st.text(min_size=1), st.sampled_from(["telemetry_guard:errors", "telemetry_guard:dead",
                                             "x:{t}:errors"]))
def test_a_streams_side_keys_share_its_cluster_slot(task: str, stream: str) -> None:
    side = [index_key(stream, task), indexed_since_key(stream), claims_key(stream),
            writer_key(stream, "host:1:ab")]
    assert {key_slot(k.encode()) for k in side} == {key_slot(stream.encode())}
