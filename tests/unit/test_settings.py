"""Settings: one clear line for a bad setting, secrets from files, no secret ever shown."""

from __future__ import annotations

import subprocess
import sys

import pytest

from config.celery import celery_config
from config.retry import LONGEST_COUNTDOWN, POLICIES
from config.settings import ConfigError, load_settings


def worker_stops_at_start_up_with(line: str) -> None:
    """A worker started in this environment exits 2 at once, saying ``line`` and nothing else on stderr."""
    result = subprocess.run([sys.executable, "-c", "import tasks.app"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [line]


def test_sandbox_needs_no_setting(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    settings = load_settings()
    assert settings.stripe_api_base.startswith("http://127.0.0.1:")
    assert settings.audit_storage_class == "GLACIER"


def test_a_missing_setting_is_named(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="OFFERS_STRIPE_API_KEY is required"):
        load_settings()


def test_a_malformed_setting_is_named_without_its_value(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_PARTNER_READ_TIMEOUT", "soon-ish")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "OFFERS_PARTNER_READ_TIMEOUT" in str(caught.value)
    assert "soon-ish" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_invalid_bus_name_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_EVENT_BUS_NAME", "commerce-offers-events@2025-09")
    with pytest.raises(ConfigError, match="OFFERS_EVENT_BUS_NAME"):
        load_settings()


def test_secrets_come_from_files_and_are_masked(clean_env: pytest.MonkeyPatch, tmp_path) -> None:
    secret = tmp_path / "stripe"
    secret.write_text("sk_test_from_a_file\n")
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_STRIPE_API_KEY_FILE", str(secret))
    settings = load_settings()
    assert settings.secret("stripe_api_key") == "sk_test_from_a_file"
    assert "sk_test_from_a_file" not in repr(settings)
    assert "sk_test_from_a_file" not in str(settings.model_dump())


def test_an_unreadable_secret_file_is_named(clean_env: pytest.MonkeyPatch, tmp_path) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_SIFT_API_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="OFFERS_SIFT_API_KEY_FILE"):
        load_settings()


def test_a_worker_with_a_bad_setting_stops_with_one_line(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_BROKER_URL", "redis://127.0.0.1:1/0")
    clean_env.setenv("OFFERS_DB_POOL_SIZE", "many")
    worker_stops_at_start_up_with(
        "offers-workers: invalid configuration: OFFERS_DB_POOL_SIZE: Input should be a valid integer, unable to parse string as an integer"
    )


def test_celery_is_json_only_with_late_acks(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_BROKER_URL", "redis://127.0.0.1:6379/0")
    config = celery_config(load_settings())
    assert config["accept_content"] == ["json"] and config["task_serializer"] == "json"
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1
    assert config["broker_transport_options"]["visibility_timeout"] > config["task_time_limit"] + LONGEST_COUNTDOWN


def test_a_visibility_timeout_shorter_than_a_task_can_hold_a_message_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_BROKER_URL", "redis://127.0.0.1:6379/0")
    clean_env.setenv("OFFERS_BROKER_VISIBILITY_TIMEOUT_SECONDS", "60")
    with pytest.raises(ConfigError, match="OFFERS_BROKER_VISIBILITY_TIMEOUT_SECONDS must exceed"):
        celery_config(load_settings())
    clean_env.setenv("OFFERS_TASK_TIME_LIMIT_SECONDS", "20")
    clean_env.setenv("OFFERS_RETRY_DELAY_SCALE", "0.1")
    assert celery_config(load_settings())["broker_transport_options"]["visibility_timeout"] == 60


def test_rabbitmq_gets_durable_quorum_queues_confirms_and_heartbeats(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    clean_env.setenv("OFFERS_REDIS_URL", "redis://127.0.0.1:6379/0")
    config = celery_config(load_settings())
    queues = {q.name: q for q in config["task_queues"]}
    assert set(queues) == {
        "offers.intake",
        "offers.realtime",
        "offers.validation",
        "offers.payment",
        "offers.risk",
        "offers.auction",
        "offers.audit",
        "offers.events",
        "offers.maintenance",
    }
    for name, queue in queues.items():
        assert queue.durable and queue.queue_arguments == {"x-queue-type": "quorum"}
        assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == ("offers", "topic", name)
    assert config["broker_transport_options"]["confirm_publish"] is True
    # A hung node of a cluster holds no read or write for ever, and a send retries past a failover
    assert config["broker_transport_options"]["read_timeout"] == config["broker_transport_options"]["write_timeout"] > 0
    assert config["task_publish_retry_policy"]["max_retries"] > 3
    assert config["broker_heartbeat"] == 30
    assert config["result_backend"] == "redis://127.0.0.1:6379/0"
    # The same routes on both brokers
    clean_env.setenv("OFFERS_BROKER_URL", "redis://127.0.0.1:6379/0")
    assert celery_config(load_settings())["task_routes"] == config["task_routes"]


def test_rabbitmq_without_a_redis_for_results_and_caches_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    with pytest.raises(ConfigError, match="OFFERS_REDIS_URL is required with a RabbitMQ broker"):
        load_settings()
    clean_env.setenv("OFFERS_BROKER_URL", "sqs://queue")
    with pytest.raises(ConfigError, match=r"OFFERS_BROKER_URL must be a Redis .* or RabbitMQ"):
        load_settings()


def test_a_redis_socket_url_is_refused_at_start_up_naming_the_setting(clean_env: pytest.MonkeyPatch) -> None:
    # Given a broker URL kombu would take but the fleet's own Redis client (caches, flags) cannot open
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_BROKER_URL", "redis+socket:///var/run/redis/redis.sock")
    # When a worker starts, then it stops at once, in one line naming the setting and what to use
    worker_stops_at_start_up_with(
        "offers-workers: invalid configuration: OFFERS_BROKER_URL: redis+socket:// is not supported; use redis:// or rediss://"
    )
    # and the same for the Redis of caches and results
    clean_env.setenv("OFFERS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    clean_env.setenv("OFFERS_REDIS_URL", "redis+socket:///var/run/redis/redis.sock")
    with pytest.raises(ConfigError, match="OFFERS_REDIS_URL: redis\\+socket:// is not supported"):
        load_settings()


def test_a_rediss_result_backend_needs_ssl_cert_reqs_and_celery_takes_what_is_accepted(
    clean_env: pytest.MonkeyPatch,
) -> None:
    from celery import Celery

    # Given a TLS Redis, as broker and result backend, without ssl_cert_reqs in its URL
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_BROKER_URL", "rediss://:hunter2@redis.internal:6380/0")
    # Then start-up refuses it in one line naming the setting, without its value
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "invalid configuration: OFFERS_BROKER_URL: a rediss:// URL needs ssl_cert_reqs=required (or optional, none) in its query string"
    )
    clean_env.setenv("OFFERS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    clean_env.setenv(
        "OFFERS_REDIS_URL", "rediss://:hunter2@redis.internal:6380/0?ssl_cert_reqs=CERT_REQUIRED"
    )  # Celery's spelling; redis-py refuses it
    with pytest.raises(ConfigError, match="OFFERS_REDIS_URL: a rediss:// URL needs ssl_cert_reqs"):
        load_settings()
    # and with it, Celery's result backend takes the URL (it is built without connecting)
    for value in ("required", "none"):
        clean_env.setenv("OFFERS_REDIS_URL", f"rediss://:hunter2@redis.internal:6380/0?ssl_cert_reqs={value}")
        app = Celery(set_as_current=False)
        app.config_from_object(celery_config(load_settings()))
        assert app.backend.connparams["ssl_cert_reqs"] is not None


def test_retry_countdowns_stay_within_their_caps() -> None:
    for policy in POLICIES.values():
        for retries in range(policy.max_retries + 1):
            assert 0 < policy.countdown(retries) <= policy.max_delay


def test_the_hold_window_takes_iso_durations_and_refuses_one_past_stripes(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    assert load_settings().hold_release_after.days == 6
    clean_env.setenv("OFFERS_HOLD_RELEASE_AFTER", "P5DT12H")
    assert load_settings().hold_release_after.total_seconds() == 5.5 * 86400
    clean_env.setenv("OFFERS_HOLD_RELEASE_AFTER", "3600")
    assert load_settings().hold_release_after.total_seconds() == 3600
    # Stripe lets an uncaptured authorization lapse after about seven days
    clean_env.setenv("OFFERS_HOLD_RELEASE_AFTER", "P8D")
    with pytest.raises(ConfigError, match="OFFERS_HOLD_RELEASE_AFTER"):
        load_settings()


def test_the_audit_export_runs_on_a_crontab_from_config(clean_env: pytest.MonkeyPatch) -> None:
    from config.beat import audit_export_schedule

    clean_env.setenv("OFFERS_SANDBOX", "1")
    schedule = audit_export_schedule(load_settings())
    assert schedule.hour == {2} and schedule.minute == {0}
    clean_env.setenv("OFFERS_AUDIT_EXPORT_CRON", "30 3 * * 1-5")
    assert audit_export_schedule(load_settings()).day_of_week == {1, 2, 3, 4, 5}
    clean_env.setenv("OFFERS_AUDIT_EXPORT_CRON", "61 2 * * *")
    with pytest.raises(ConfigError, match="OFFERS_AUDIT_EXPORT_CRON"):
        audit_export_schedule(load_settings())
    clean_env.setenv("OFFERS_AUDIT_EXPORT_CRON", "nightly")
    with pytest.raises(ConfigError, match="OFFERS_AUDIT_EXPORT_CRON"):
        load_settings()


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"OFFERS_SMTP_TO": "oncall@example.com"}, "OFFERS_SMTP_FROM is required with OFFERS_SMTP_HOST"),
        ({"OFFERS_SMTP_FROM": "offers@example.com"}, "OFFERS_SMTP_TO is required with OFFERS_SMTP_HOST"),
        (
            {"OFFERS_SMTP_FROM": "offers@example.com", "OFFERS_SMTP_TO": "oncall@example.com, on call"},
            "OFFERS_SMTP_TO: address 2 is not an email address",
        ),
        (
            {"OFFERS_SMTP_FROM": "a@example.com, b@example.com", "OFFERS_SMTP_TO": "oncall@example.com"},
            "OFFERS_SMTP_FROM is not one email address",
        ),
        (
            {"OFFERS_SMTP_FROM": "a@example.com", "OFFERS_SMTP_TO": "b@example.com", "OFFERS_SMTP_USERNAME": "mailer"},
            "OFFERS_SMTP_USERNAME and OFFERS_SMTP_PASSWORD go together",
        ),
        (
            {"OFFERS_SMTP_FROM": "a@example.com", "OFFERS_SMTP_TO": "b@example.com", "OFFERS_SMTP_PORT": "smtp"},
            "OFFERS_SMTP_PORT: Input should be a valid integer",
        ),
    ],
)
def test_a_bad_smtp_setting_stops_start_up_in_one_line(clean_env: pytest.MonkeyPatch, env, line) -> None:
    for key, value in {"OFFERS_SANDBOX": "1", "OFFERS_SMTP_HOST": "smtp.example.com", **env}.items():
        clean_env.setenv(key, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert line in str(caught.value) and "\n" not in str(caught.value)


def test_a_worker_with_an_smtp_host_and_no_recipients_stops_with_one_line(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_BROKER_URL", "redis://127.0.0.1:1/0")
    clean_env.setenv("OFFERS_SMTP_HOST", "smtp.example.com")
    clean_env.setenv("OFFERS_SMTP_FROM", "offers@example.com")
    worker_stops_at_start_up_with(
        "offers-workers: invalid configuration: OFFERS_SMTP_TO is required with OFFERS_SMTP_HOST (comma-separated addresses)"
    )


def test_the_smtp_password_comes_from_a_file_and_is_masked(clean_env: pytest.MonkeyPatch, tmp_path) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("smtp-secret-from-a-file\n")
    clean_env.setenv("OFFERS_SMTP_PASSWORD_FILE", str(secret))
    settings = load_settings(
        sandbox=True,
        smtp_host="smtp.example.com",
        smtp_username="mailer",
        smtp_from="a@example.com",
        smtp_to="b@example.com",
    )
    assert settings.secret("smtp_password") == "smtp-secret-from-a-file"
    assert "smtp-secret-from-a-file" not in repr(settings)
    assert settings.smtp_port == 587 and settings.smtp_recipients == ["b@example.com"]


def test_a_failpoint_is_refused_outside_the_sandbox(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_FAILPOINTS", "crash_on_offer:pill-, crash_on_offer:other")
    assert load_settings().crash_on_offer == ("pill-", "other")
    clean_env.setenv("OFFERS_FAILPOINTS", "crash_on_offer:")
    with pytest.raises(ConfigError, match="OFFERS_FAILPOINTS takes crash_on_offer:PREFIX"):
        load_settings()
    # A deployment that sets one by accident does not start
    clean_env.delenv("OFFERS_SANDBOX")
    clean_env.setenv("OFFERS_FAILPOINTS", "crash_on_offer:pill-")
    worker_stops_at_start_up_with(
        "offers-workers: invalid configuration: OFFERS_FAILPOINTS is for drills and is refused unless OFFERS_SANDBOX=1"
    )


@pytest.mark.parametrize("deliveries", ["0", "11"])
def test_the_poison_limit_stays_under_rabbitmqs(clean_env: pytest.MonkeyPatch, deliveries: str) -> None:
    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_POISON_DELIVERIES", deliveries)
    with pytest.raises(ConfigError, match="OFFERS_POISON_DELIVERIES"):
        load_settings()
