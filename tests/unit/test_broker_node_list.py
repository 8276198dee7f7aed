"""OFFERS_BROKER_URL as a RabbitMQ cluster's list of nodes (``amqp://a;amqp://b;amqp://c``)."""

from __future__ import annotations

import pytest

from config.celery import celery_config
from config.settings import ConfigError, get_settings, load_settings
from offers_workers.logs import masked_url
from offers_workers.ops.cli import broker_unreachable

NODES = ";".join(f"amqp://fleet:s3cret@mq-{n}.internal:{5670 + i}/offers" for i, n in enumerate("abc", 1))


def test_a_list_of_nodes_is_one_broker_with_failover(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_BROKER_URL", NODES)
    clean_env.setenv("OFFERS_REDIS_URL", "redis://127.0.0.1:6379/0")
    clean_env.setenv("OFFERS_ALLOW_INSECURE_LINKS", "broker")
    settings = load_settings()
    config = celery_config(settings)
    assert config["broker_url"] == NODES and config["broker_failover_strategy"] == "round-robin"
    from tasks.app import broker_user  # not at import: the app reads the settings of the environment

    assert broker_user(NODES) == "fleet"
    # The one line names every node tried, and no password
    get_settings.cache_clear()
    line = broker_unreachable(ConnectionRefusedError(111, "Connection refused"))
    get_settings.cache_clear()
    assert "mq-a.internal:5671, mq-b.internal:5672, mq-c.internal:5673" in line and "s3cret" not in line
    # Shown (`offers-workers dev`), every node's password masked
    assert masked_url(NODES).count("fleet:***@") == 3 and "s3cret" not in masked_url(NODES)


def test_a_list_mixing_schemes_is_refused_in_one_line(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_BROKER_URL", "amqp://fleet:s3cret@127.0.0.1:5672/;redis://127.0.0.1:6379/0")
    clean_env.setenv("OFFERS_REDIS_URL", "redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "OFFERS_BROKER_URL" in str(caught.value) and "s3cret" not in str(caught.value)
    assert "\n" not in str(caught.value)
