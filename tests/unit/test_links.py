"""Start-up refuses a link to another host that is not verified TLS (config/links.py).

What a reviewer tries first: a deployment's settings with one link left plain or unverified. Each
must stop start-up in one line that names the setting and never prints its value."""

from __future__ import annotations

import pytest

from config import links
from config.settings import ConfigError, load_settings

PASSWORD = "s3cr3t-canary"


@pytest.fixture(autouse=True)
def _only_these_settings(clean_env: pytest.MonkeyPatch) -> None:
    """Each test's settings are the ones it passes: nothing from the shell's (or a fleet's) OFFERS_*."""


#: A production deployment whose every link is verified TLS.
VERIFIED = {
    "database_url": f"postgresql://app:{PASSWORD}@db.internal/offers?sslmode=verify-full&sslrootcert=system",
    "broker_url": f"amqps://fleet:{PASSWORD}@mq-1.internal/offers",
    "redis_url": f"rediss://:{PASSWORD}@cache.internal:6380/0?ssl_cert_reqs=required",
    "stripe_api_key": "sk_live_unit",
    "sift_api_key": "sift",
    "sift_account_id": "acct",
    "plaid_client_id": "client",
    "plaid_secret": "plaid",
    "sns_submitted_topic_arn": "arn:aws:sns:us-east-1:1:a",
    "sns_cancelled_topic_arn": "arn:aws:sns:us-east-1:1:b",
    "audit_bucket": "audit",
    "message_keys": "fleet-1=" + "k" * 32,
    "payment_secret_keys": "p1=" + "p" * 44,
}


def refusal(**changes: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(**{**VERIFIED, **changes})
    said = str(caught.value)
    assert "\n" not in said and PASSWORD not in said
    return said


def test_every_link_verified_starts() -> None:
    load_settings(**VERIFIED)


@pytest.mark.parametrize(
    ("changes", "setting", "security"),
    [
        ({"database_url": "postgresql://app@db.internal/offers"}, "OFFERS_DATABASE_URL", "plain (sslmode=prefer"),
        ({"database_url": "host=db.internal dbname=offers sslmode=require"}, "OFFERS_DATABASE_URL", "not verified"),
        (
            {"database_url": "postgresql://app@db.internal/offers?sslmode=verify-ca"},
            "OFFERS_DATABASE_URL",
            "host name not checked",
        ),
        ({"database_owner_url": "postgresql://owner@db.internal/offers"}, "OFFERS_DATABASE_OWNER_URL", "plain"),
        ({"broker_url": "amqp://fleet@mq-1.internal/offers"}, "OFFERS_BROKER_URL", "plain (amqp://)"),
        (
            {"broker_url": "amqps://fleet@mq-1.internal/offers;amqp://fleet@mq-2.internal/offers"},
            "OFFERS_BROKER_URL",
            "plain",
        ),
        ({"redis_url": "redis://cache.internal:6379/0"}, "OFFERS_REDIS_URL", "plain"),
        ({"redis_url": "rediss://cache.internal:6380/0?ssl_cert_reqs=none"}, "OFFERS_REDIS_URL", "ssl_cert_reqs=none"),
        ({"redis_url": "rediss://cache.internal:6380/0?ssl_cert_reqs=optional"}, "OFFERS_REDIS_URL", "not verified"),
        ({"stripe_api_base": "http://stripe.internal"}, "OFFERS_STRIPE_API_BASE", "plain (http://)"),
        ({"plaid_host": "http://plaid.internal"}, "OFFERS_PLAID_HOST", "plain"),
        ({"aws_endpoint_url": "http://vpce.internal"}, "OFFERS_AWS_ENDPOINT_URL", "plain"),
    ],
)
def test_a_link_that_is_not_verified_is_refused(changes: dict[str, str], setting: str, security: str) -> None:
    said = refusal(**changes)
    assert said.startswith(f"invalid configuration: {setting}: the link to "), said
    assert security in said and "OFFERS_ALLOW_INSECURE_LINKS" in said


def test_a_link_to_this_host_needs_no_tls() -> None:
    load_settings(
        **{
            **VERIFIED,
            "database_url": "postgresql://app@127.0.0.1/offers",
            "broker_url": "amqp://fleet@localhost/offers",
            "redis_url": "redis://[::1]:6379/0",
            "stripe_api_base": "http://127.0.0.1:12111",
        }
    )
    load_settings(**{**VERIFIED, "database_url": "host=/run/postgresql dbname=offers"})


def test_the_deployment_may_allow_a_named_link_and_only_that_one() -> None:
    plain_broker = {"broker_url": "amqp://fleet@mq-1.internal/offers"}
    load_settings(**{**VERIFIED, **plain_broker, "allow_insecure_links": "broker"})
    said = refusal(**plain_broker, redis_url="redis://cache.internal/0", allow_insecure_links="broker")
    assert "OFFERS_REDIS_URL" in said
    assert "'brokr' is not a link" in refusal(allow_insecure_links="brokr")


def test_the_sandbox_takes_any_link() -> None:
    load_settings(
        sandbox=True, database_url="postgresql://app@db.internal/offers", broker_url="redis://cache.internal/0"
    )


def test_tls_options_in_an_amqp_url_are_refused_for_the_settings_that_take_them() -> None:
    # kombu hands them to the socket wrapper: one crashes it, another silently skips the host name.
    said = refusal(broker_url="amqps://fleet@mq-1.internal/offers?ssl_ca_certs=/etc/ca.pem")
    assert "OFFERS_BROKER_TLS_CA_FILE" in said


def test_broker_tls_files_must_be_readable_and_go_with_amqps(tmp_path) -> None:
    assert "OFFERS_BROKER_TLS_CA_FILE: cannot read the file" in refusal(broker_tls_ca_file=str(tmp_path / "none.pem"))
    (tmp_path / "ca.pem").write_text("x")
    said = refusal(broker_tls_ca_file=str(tmp_path / "ca.pem"), broker_url="redis://127.0.0.1/0")
    assert "applies to an amqps:// broker" in said
    assert "go together" in refusal(broker_tls_cert_file=str(tmp_path / "ca.pem"))


def test_the_amqps_broker_checks_chain_and_host_name(tmp_path) -> None:
    import ssl

    from config.celery import celery_config

    (tmp_path / "ca.pem").write_text("x")
    conf = celery_config(load_settings(**{**VERIFIED, "broker_tls_ca_file": str(tmp_path / "ca.pem")}))
    tls = conf["broker_use_ssl"]
    assert tls["cert_reqs"] == ssl.CERT_REQUIRED and tls["ca_certs"] == str(tmp_path / "ca.pem")
    # None: kombu puts in the host of the node it connects to, which py-amqp then checks.
    assert "server_hostname" in tls and tls["server_hostname"] is None


def test_the_readmes_tls_example_is_a_verified_deployment(tmp_path) -> None:
    from tests.contract.markdown import read_blocks

    env = dict(line.split("=", 1) for line in read_blocks().snippets["tls-links"].lines())
    for name in ("OFFERS_BROKER_TLS_CA_FILE", "OFFERS_BROKER_TLS_CERT_FILE", "OFFERS_BROKER_TLS_KEY_FILE"):
        (tmp_path / name).write_text("pem")
        env[name] = str(tmp_path / name)
    settings = load_settings(**{**VERIFIED, **{k.removeprefix("OFFERS_").lower(): v for k, v in env.items()}})

    shown = {link.name: link for link in links.links(settings)}
    assert all(shown[n].verified and not shown[n].local for n in ("database", "broker", "redis"))


def test_mail_without_starttls_goes_to_this_host_or_where_allowed_only() -> None:
    from offers_workers.ops.export_summary import plain_smtp_allowed

    mail = {"smtp_from": "audit@example.com", "smtp_to": "ops@example.com"}
    # A man in the middle strips STARTTLS from the server's answer: the summary must not follow.
    assert not plain_smtp_allowed(load_settings(**VERIFIED, **mail, smtp_host="smtp.example.com"))
    assert plain_smtp_allowed(load_settings(**VERIFIED, **mail, smtp_host="127.0.0.1"))
    assert plain_smtp_allowed(
        load_settings(**VERIFIED, **mail, smtp_host="smtp.example.com", allow_insecure_links="smtp")
    )


def test_a_primary_and_standby_url_shows_both_hosts_and_is_judged_whole() -> None:
    both = "postgresql://app@db-a.internal:5432,db-b.internal:5433/offers?target_session_attrs=read-write"
    link = links.database_link("database", "OFFERS_DATABASE_URL", f"{both}&sslmode=verify-full")
    assert (link.target, link.verified) == ("db-a.internal:5432, db-b.internal:5433", True)
    # One host off this machine is enough for the link to need TLS.
    mixed = "postgresql://app@127.0.0.1:5432,db-b.internal:5432/offers?target_session_attrs=read-write"
    assert "OFFERS_DATABASE_URL: the link to 127.0.0.1:5432, db-b.internal:5432 is plain" in refusal(database_url=mixed)
