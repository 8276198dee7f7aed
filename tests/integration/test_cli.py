"""The operator CLI as an operator runs it: exit codes, --json output, clear errors."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import psutil
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from offers_workers.local.embedded import free_port
from offers_workers.local.samples import base_offer
from offers_workers.saga import intake, stages
from tests.conftest import SERVER, cli, cli_at_once, new_id, project_root, wait_until


@pytest.fixture(scope="module")
def rejected_offer(runtime) -> str:
    offer = base_offer(new_id("cli"), 4) | {"listing_id": "lst_3"}
    intake.submit(runtime, offer)
    stages.validate(runtime, offer["offer_id"])
    return offer["offer_id"]


def test_offers_show_json_has_the_contract_fields(rejected_offer: str) -> None:
    result = cli("offers", "show", rejected_offer, "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert {
        "offer_id",
        "state",
        "reason",
        "amount_cents",
        "currency",
        "payment_intent_id",
        "risk_score",
        "history",
    } <= set(shown)
    assert (shown["state"], shown["reason"]) == ("rejected", "listing_unavailable")
    assert [h["state"] for h in shown["history"]] == ["received", "rejected"]
    assert all(h["at"] for h in shown["history"])


def test_offers_show_unknown_is_exit_1() -> None:
    result = cli("offers", "show", "no_such_offer")
    assert result.returncode == 1
    assert "no offer 'no_such_offer'" in result.stderr


def test_offers_list_json_filters_by_state(rejected_offer: str) -> None:
    result = cli("offers", "list", "--state", "rejected", "--since", "1h", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert rejected_offer in {o["offer_id"] for o in listed}
    assert {o["state"] for o in listed} == {"rejected"}


@pytest.mark.parametrize(
    "args",
    [
        ("offers", "list", "--state", "lost"),
        ("offers", "list", "--since", "yesterday-ish"),
        ("submit", "no-such-file.json"),
        ("policy", "load"),
    ],
)
def test_usage_errors_are_exit_2(args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert result.stderr.strip()


def test_a_bad_policy_file_is_named_and_loads_nothing(tmp_path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("makers:\n  - maker_id: mkr_9\n    min_offer_cents: -1\n")
    result = cli("policy", "load", str(bad))
    assert result.returncode == 2
    assert "makers.0.min_offer_cents" in result.stderr


def test_policy_load_takes_effect_at_once(runtime, tmp_path) -> None:
    listing = new_id("lst")
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "makers": [{"maker_id": "mkr_cli", "min_offer_cents": 100}],
                "listings": [
                    {"listing_id": listing, "maker_id": "mkr_cli", "asking_price_cents": 5000, "currency": "USD"}
                ],
            }
        )
    )
    assert cli("policy", "load", str(policy)).returncode == 0
    assert runtime.policies.lookup(runtime.db, listing).listing.status == "active"  # now cached
    data = json.loads(policy.read_text())
    data["listings"][0]["status"] = "paused"
    policy.write_text(json.dumps(data))
    result = cli("policy", "load", str(policy))
    assert result.returncode == 0 and "loaded 1 makers and 1 listings" in result.stdout
    assert runtime.policies.lookup(runtime.db, listing).listing.status == "paused"


def test_intake_rejections_lists_what_was_refused(runtime) -> None:
    offer_id = new_id("refused")
    intake.submit(runtime, base_offer(offer_id, 1) | {"amount_cents": -1})
    result = cli("intake", "rejections", "--since", "10m", "--json")
    assert result.returncode == 0, result.stderr
    mine = [r for r in json.loads(result.stdout) if r["offer_id"] == offer_id]
    assert len(mine) == 1 and mine[0]["errors"][0]["field"] == "amount_cents"


def test_schema_is_json_schema() -> None:
    result = cli("schema")
    assert result.returncode == 0
    assert json.loads(result.stdout)["title"] == "Offer payload v1"


def test_db_migrate_from_two_processes_at_once_then_again(settings) -> None:
    # Given a brand-new database
    name = new_id("mig").lower()
    with psycopg.connect(SERVER["owner"], autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(SERVER["owner"], dbname=name)
    env = {"OFFERS_DATABASE_URL": url, "OFFERS_DATABASE_OWNER_URL": url}
    try:
        # When two release phases run at once
        runs = cli_at_once("db", "migrate", env=env, timeout=60)
        # Then both succeed, one applied everything and the other found nothing left to do
        assert [run.returncode for run in runs] == [0, 0], runs
        assert sorted("applied" in run.stdout for run in runs) == [False, True]
        with psycopg.connect(url) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
        assert versions == sorted(set(versions)) and versions
        # and a third run is a no-op
        again = cli("db", "migrate", env=env, timeout=60)
        assert again.returncode == 0 and "up to date" in again.stdout
    finally:
        with psycopg.connect(SERVER["owner"], autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_dlq_stage_choices_name_every_stage_a_task_dead_letters_to(celery_app) -> None:
    from offers_workers.ops.cli.dlq import dlq_list, dlq_replay
    from tasks.base import OffersTask

    # Given every task the workers run
    celery_app.loader.import_default_modules()
    stages = {task.stage for task in celery_app.tasks.values() if isinstance(task, OffersTask)}
    assert {"cancellation", "maintenance"} <= stages
    # Then `dlq list --stage` and `dlq replay --stage` take each of their stages
    for command in (dlq_list, dlq_replay):
        [option] = [p for p in command.params if p.name == "stage"]
        assert stages <= set(option.type.choices), command.name
    # and a task cannot be given a stage they do not offer
    with pytest.raises(TypeError, match=re.escape("not in offers_workers.saga.deadletter.STAGES")):
        type("misfiled", (OffersTask,), {"stage": "nowhere"})


def test_a_cancellation_dead_letter_is_listed_and_replayed_by_its_stage(runtime) -> None:
    from offers_workers.saga import deadletter

    # Given a cancel request that failed past its retries
    offer_id = new_id("dlqstage")
    entry_id = deadletter.record(
        runtime,
        stage="cancellation",
        task_name="offers.cancel",
        kwargs={"offer_id": offer_id, "reason": "ops", "actor": "ops"},
        error=RuntimeError("boom"),
        traceback_text="",
        attempts=1,
        from_state=None,
    )
    # When the operator looks at that queue by name
    listed = cli("dlq", "list", "--stage", "cancellation", "--json")
    # Then it is there, and a replay of that queue can be asked for
    assert listed.returncode == 0, listed.stderr
    assert entry_id in {e["id"] for e in json.loads(listed.stdout)}
    dry = cli("dlq", "replay", "--all", "--stage", "cancellation", "--dry-run")
    assert dry.returncode == 0 and str(entry_id) in dry.stdout, dry.stderr
    assert cli("dlq", "list", "--stage", "maintenance", "--json").returncode == 0
    assert cli("dlq", "discard", str(entry_id), "--reason", "test over").returncode == 0


#: A Postgres and a broker nothing listens on, their URLs carrying a password that must never be shown.
UNREACHABLE_POSTGRES = "postgresql://offers:pg-s3cret@127.0.0.1:1/offers"
UNREACHABLE_BROKER = "redis://:redis-s3cret@127.0.0.1:1/0"


def assert_one_line(result: subprocess.CompletedProcess[str], start: str) -> None:
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(start), result.stderr
    assert "s3cret" not in result.stdout + result.stderr


@pytest.mark.usefixtures("offers_env")
@pytest.mark.parametrize("args", [("offers", "show", "off_1"), ("offers", "list", "--json"), ("db", "migrate")])
def test_an_unreachable_postgres_is_one_line_and_exit_1(args: tuple[str, ...]) -> None:
    # Given Postgres down (nothing listens on the port)
    started = time.monotonic()
    # When a command that needs it runs
    result = cli(
        *args,
        env={"OFFERS_DATABASE_URL": UNREACHABLE_POSTGRES, "OFFERS_DATABASE_OWNER_URL": UNREACHABLE_POSTGRES},
        timeout=60,
    )
    # Then it says so in one line naming the server (never the password), soon, with exit 1
    assert_one_line(result, "offers-workers: cannot reach PostgreSQL (127.0.0.1:1): ")
    assert "Connection refused" in result.stderr
    assert result.stdout == ""
    assert time.monotonic() - started < 15


def test_an_unreachable_broker_is_one_line_and_exit_1_and_replays_nothing(runtime, tmp_path) -> None:
    from offers_workers.saga import deadletter
    from offers_workers.store import dead_letters

    # Given a pending dead letter, and the broker down
    entry_id = deadletter.record(
        runtime,
        stage="events",
        task_name="offers.publish_event",
        kwargs={"event_id": new_id("evt")},
        error=RuntimeError("boom"),
        traceback_text="",
        attempts=1,
        from_state=None,
    )
    down = {"OFFERS_BROKER_URL": UNREACHABLE_BROKER}
    offer = tmp_path / "offer.json"
    offer.write_text(json.dumps(base_offer(new_id("down"), 1)))
    # When each command that sends runs
    for args in (("submit", str(offer)), ("cancel", "off_1", "--reason", "ops"), ("dlq", "replay", str(entry_id))):
        # Then it says the broker cannot be reached, in one line, with exit 1
        assert_one_line(cli(*args, env=down, timeout=60), "offers-workers: cannot reach the broker (127.0.0.1:1): ")
    # and the dead letter was not claimed: a replay once the broker is back still sends it
    with runtime.db.transaction() as conn:
        assert dead_letters.entry(conn, entry_id).status == "pending"
    assert cli("dlq", "discard", str(entry_id), "--reason", "test over").returncode == 0


def test_a_send_to_a_virtual_host_no_worker_declared_fails_in_one_line(offers_env: dict[str, str]) -> None:
    from tests.brokers import rabbitmq_unavailable, rabbitmq_vhost
    from tests.conftest import RUN_ID

    if reason := rabbitmq_unavailable():
        pytest.skip(reason)
    # The CLI declares nothing it sends to (ops' broker user may not): before any worker has declared
    # the exchange, RabbitMQ refuses the send, and the operator is told so in one line
    with rabbitmq_vhost(f"offers-test-{RUN_ID}-undeclared") as url:
        done = cli(
            "cancel",
            "off_undeclared",
            "--reason",
            "ops",
            env={"OFFERS_BROKER_URL": url, "OFFERS_REDIS_URL": offers_env["OFFERS_BROKER_URL"]},
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "offers-workers: RabbitMQ refused the send: NOT_FOUND - no exchange 'offers' in vhost"
        f" 'offers-test-{RUN_ID}-undeclared'; start the workers once on this virtual host, then send again"
    ]


@contextmanager
def metrics_server() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`offers-workers metrics serve` on a free port, as the Procfile's line runs it; stopped after."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "offers_workers.ops.cli", "metrics", "serve", "--port", str(port)],
        cwd=project_root(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield server, port
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.usefixtures("offers_env")
def test_metrics_serve_listens_on_loopback_only_by_default() -> None:
    with metrics_server() as (server, port):

        def listening() -> set[str]:
            found = psutil.Process(server.pid).net_connections(kind="tcp")
            return {c.laddr.ip for c in found if c.status == psutil.CONN_LISTEN and c.laddr.port == port}

        # The endpoint has no authentication: only this host reaches it unless --host says otherwise
        assert wait_until(listening, timeout=30, message="metrics serve listening") == {"127.0.0.1"}


@pytest.mark.usefixtures("offers_env")
def test_a_scrape_answers_at_once_while_idle_connections_are_held_open() -> None:
    with metrics_server() as (_, port), ExitStack() as idle:

        def scrape() -> bytes:
            # Well under the 10 s an idle connection is kept: a scrape queued behind one fails here
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return bytes(response.read())

        def answered() -> bool:
            try:
                return b"offers_audit_verify_findings" in scrape()
            except OSError:
                return False

        wait_until(answered, timeout=60, message="metrics serve answering")
        # Given 20 scrapers that connect and send nothing (a port scan, a stuck client, an attacker)
        for _ in range(20):
            idle.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        # Then a scrape still answers, whole, and so do five more in a row (each in about 10 ms on
        # an idle 2-core machine; the test allows for a loaded one)
        for _ in range(6):
            body = scrape()
            assert b"offers_queue_consumers" in body and b"offers_audit_unsealed_rows" in body
