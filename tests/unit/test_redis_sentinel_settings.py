"""Redis with Sentinel in the settings: what start-up refuses, in one line that never prints a value,
what each role is configured with, and what a worker's configuration shows of the passwords."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery import Celery

from config import links
from config.celery import celery_config
from config.settings import ConfigError, load_settings
from tasks.redaction import conf
from tests.unit.test_links import PASSWORD, VERIFIED

SENTINELS = f"sentinel://:{PASSWORD}@s1.internal:26379/2;sentinel://s2.internal:26380;sentinel://s3.internal"


@pytest.fixture(autouse=True)
def _only_these_settings(clean_env: pytest.MonkeyPatch) -> None:
    """Each test's settings are the ones it passes."""


def refusal(**changes: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(**{**VERIFIED, **changes})
    said = str(caught.value)
    assert "\n" not in said and PASSWORD not in said and "s1.internal:26379/2" not in said
    return said


def test_a_sentinel_url_needs_the_masters_name() -> None:
    said = refusal(broker_url=SENTINELS, redis_url="", allow_insecure_links="broker")
    assert "OFFERS_REDIS_SENTINEL_MASTER is required" in said and "OFFERS_BROKER_URL" in said


def test_a_malformed_sentinel_url_is_refused_naming_the_setting() -> None:
    said = refusal(redis_url="sentinel://s1.internal:port", redis_sentinel_master="offers")
    assert said.startswith("invalid configuration: OFFERS_REDIS_URL: a Sentinel URL is sentinel://host:port")


def test_a_sentinel_link_is_plain_and_refused_off_this_host_unless_allowed() -> None:
    said = refusal(broker_url=SENTINELS, redis_url="", redis_sentinel_master="offers")
    assert said.startswith("invalid configuration: OFFERS_BROKER_URL: the link to s1.internal:26379, s2.internal:26380")
    load_settings(**{**VERIFIED, "broker_url": SENTINELS, "redis_url": "", "redis_sentinel_master": "offers",
                     "allow_insecure_links": "broker"})  # fmt: skip
    local = links.redis_link("redis", "OFFERS_REDIS_URL", "sentinel://127.0.0.1:26379;sentinel://localhost:26380")
    assert (local.security, local.local, local.acceptable) == ("plain", True, True)


def test_every_role_finds_the_master_through_the_sentinels_and_no_password_shows() -> None:
    # Given a Redis broker with Sentinel, sentinels that require a password of their own
    settings = load_settings(
        **{**VERIFIED, "broker_url": SENTINELS, "redis_url": "", "redis_sentinel_master": "offers"},
        redis_sentinel_password="sentinel-" + PASSWORD,
        allow_insecure_links="broker",
    )
    config = celery_config(settings)
    # Then the broker, the results and the beat all ask the sentinels for the master named "offers"
    assert config["broker_transport"] == "tasks.redis_envelopes:SentinelTransport"
    for options in (config["broker_transport_options"], config["result_backend_transport_options"]):
        assert options["master_name"] == "offers"
        assert options["sentinel_kwargs"]["password"] == "sentinel-" + PASSWORD
    assert config["result_backend"] == SENTINELS
    beat = config["redbeat_redis_options"]
    assert config["redbeat_redis_url"].startswith("redis-sentinel")
    assert (beat["service_name"], beat["db"], beat["password"]) == ("offers", 2, PASSWORD)
    assert beat["sentinels"] == [("s1.internal", 26379), ("s2.internal", 26380), ("s3.internal", 26379)]
    # And a worker's configuration (Flower, `celery inspect conf`) shows neither password
    app = Celery(set_as_current=False)
    app.conf.update(config)
    shown = repr(conf(SimpleNamespace(app=app)))
    assert PASSWORD not in shown and "s2.internal:26380" in shown
