"""Every store link over TLS, verified: a saga runs with Postgres, RabbitMQ and Redis each reached
over TLS with a CA made by the test, and a client that trusts another CA, or asks for a host name
the server's certificate does not carry, is refused in one line and sends nothing.

The servers are this test's own, on loopback: a private Postgres cluster that takes TLS only
(``hostssl``), a RabbitMQ node with a TLS listener only, and ``redis-server --tls-port``.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import kombu
import psycopg
import pytest
import redis

from offers_workers.local.fleet import PROJECT_ROOT, process_env
from tests.conftest import RUN_ID
from tests.drillkit import drill
from tests.tls import (
    Certs,
    make_certs,
    openssl_unavailable,
    postgres_tls_unavailable,
    rabbitmq_tls_unavailable,
    redis_tls_unavailable,
    tls_postgres,
    tls_rabbitmq,
    tls_redis,
)

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def tls_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Certs, dict[str, str]]]:
    """The three servers over TLS, and the URLs and settings that reach them verified."""
    for reason in (
        openssl_unavailable(),
        postgres_tls_unavailable(),
        redis_tls_unavailable(),
        rabbitmq_tls_unavailable(),
    ):
        if reason:
            pytest.skip(reason)
    folder = tmp_path_factory.mktemp("tls")
    certs = make_certs(folder / "certs")
    with ExitStack() as stack:
        pg_port = stack.enter_context(tls_postgres(certs))
        redis_port = stack.enter_context(tls_redis(certs, folder))
        mq_port, user, password = stack.enter_context(
            tls_rabbitmq(certs, folder / "rabbitmq", f"offers-tls-{RUN_ID[:8]}")
        )
        verified = f"sslmode=verify-full&sslrootcert={certs.ca}"
        with psycopg.connect(f"postgresql://postgres@localhost:{pg_port}/postgres?{verified}", autocommit=True) as conn:
            conn.execute("CREATE DATABASE offers_tls")
        yield (
            certs,
            {
                "OFFERS_DATABASE_URL": f"postgresql://postgres@localhost:{pg_port}/offers_tls?{verified}",
                "OFFERS_BROKER_URL": f"amqps://{user}:{password}@localhost:{mq_port}/",
                "OFFERS_BROKER_TLS_CA_FILE": str(certs.ca),
                "OFFERS_REDIS_URL": f"rediss://localhost:{redis_port}/0?ssl_cert_reqs=required&ssl_ca_certs={certs.ca}",
            },
        )


def test_a_saga_runs_with_every_store_link_over_verified_tls(
    tls_servers: tuple[Certs, dict[str, str]], offers_env: dict[str, str], tmp_path: Path
) -> None:
    from offers_workers.local.stack import load_sample_policy
    from offers_workers.store import db
    from tests.drillkit import settings_for

    _, links = tls_servers
    db.migrate(links["OFFERS_DATABASE_URL"])
    env = {**offers_env, **links}
    load_sample_policy(settings_for(env))
    with drill("tls", env, tmp_path) as d:
        samples = d.samples(40, seed=41)
        d.submit(samples)
        d.drain(samples, timeout=120)
        d.verify(samples)
        # Each of the fleet's links was TLS, as the servers saw it.
        with d.runtime.db.read() as conn:
            ssl_rows = conn.execute(
                "SELECT count(*) FILTER (WHERE s.ssl) AS tls, count(*) AS n"
                " FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = 'offers_tls'"
            ).fetchone()
        assert ssl_rows["tls"] == ssl_rows["n"] > 0
        # And `health` says so, link by link.
        health = _cli(env, "health")
        rows = {line.split("│")[1].strip(): line for line in health.stdout.splitlines() if line.startswith("│")}
        for link in ("database", "broker", "redis"):
            assert "verified TLS" in rows[link], health.stdout


def _cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "offers-workers"), *args],
        env=process_env({**env, "COLUMNS": "200"}),
        cwd=PROJECT_ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _wrong(links: dict[str, str], certs: Certs, link: str, fault: str) -> dict[str, str]:
    """The settings with one link trusting another CA, or reaching the server by a name its
    certificate does not carry (127.0.0.2, where the server listens too)."""
    setting = {"database": "OFFERS_DATABASE_URL", "broker": "OFFERS_BROKER_URL", "redis": "OFFERS_REDIS_URL"}[link]
    changed = dict(links)
    if fault == "wrong CA":
        if link == "broker":
            changed["OFFERS_BROKER_TLS_CA_FILE"] = str(certs.other_ca)
        else:
            changed[setting] = links[setting].replace(str(certs.ca), str(certs.other_ca))
    else:
        changed[setting] = links[setting].replace("@localhost:", "@127.0.0.2:").replace("//localhost:", "//127.0.0.2:")
    assert changed != links
    return changed


@pytest.mark.parametrize("fault", ["wrong CA", "wrong host name"])
@pytest.mark.parametrize("link", ["database", "broker", "redis"])
def test_a_link_that_cannot_be_verified_is_refused_in_one_line_and_sends_nothing(
    tls_servers: tuple[Certs, dict[str, str]], offers_env: dict[str, str], link: str, fault: str, tmp_path: Path
) -> None:
    from offers_workers.store import db

    certs, links = tls_servers
    db.migrate(links["OFFERS_DATABASE_URL"])
    env = {**offers_env, **links, "OFFERS_REDIS_KEY_PREFIX": f"offers:tls-{link}-{fault[6:10]}:"}
    bad = {**env, **_wrong(links, certs, link, fault)}
    offer_id = f"off_tls_{link}_{fault[6:10]}_{RUN_ID[:6]}"
    offer = {
        "offer_id": offer_id,
        "listing_id": "lst_1",
        "buyer_id": "buy_tls",
        "amount_cents": 1000,
        "currency": "USD",
        "payment": {"method": "card", "payment_method_id": "pm_card_visa"},
        "buyer_context": {"email": "tls@example.com", "ip": "198.51.100.7"},
        "submitted_at": "2026-12-07T12:00:00Z",
    }
    # What each link carries: the broker an offer, Postgres a flag, Redis the policy cache's invalidation.
    command = {
        "broker": ("submit", "-"),
        "database": ("flags", "set", "SOFT_LAUNCH_MODE", "on"),
        "redis": ("policy", "load", str(PROJECT_ROOT / "config" / "policy" / "sample.yaml")),
    }[link]
    redis_client = redis.Redis.from_url(links["OFFERS_REDIS_URL"])
    commands_before = redis_client.info("stats")["total_commands_processed"]
    refused = _cli(bad, *command, stdin=json.dumps(offer))
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode != 0, refused.stdout
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    said = lines[0].lower()
    if fault == "wrong CA":
        assert "certificate verify failed" in said, lines[0]
    else:  # OpenSSL says "mismatch", libpq "does not match host name"
        assert "mismatch" in said or "does not match host name" in said, lines[0]

    # Nothing reached the server the verified link leads to.
    if link == "broker":
        with (
            kombu.Connection(
                links["OFFERS_BROKER_URL"],
                ssl={"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": str(certs.ca), "server_hostname": "localhost"},
            ) as conn,
            conn.channel() as channel,
        ):
            try:
                waiting = channel.queue_declare("offers.intake", passive=True).message_count
            except conn.channel_errors:
                waiting = 0
        assert waiting == 0
    elif link == "redis":
        # The commands Redis ran meanwhile: our own INFO, nothing of the refused client's.
        assert redis_client.info("stats")["total_commands_processed"] == commands_before + 1
    else:
        flags = json.loads(_cli(env, "flags", "list", "--json").stdout)
        assert not any(f["name"] == "SOFT_LAUNCH_MODE" and f["enabled"] for f in flags), flags
    redis_client.close()
