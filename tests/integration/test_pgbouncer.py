"""The fault drills and the broker scenarios once more, with the fleet's Postgres behind PgBouncer
in transaction mode: ``OFFERS_DATABASE_URL`` points at the pooler and nothing else changes,
migrations included. Then ``db migrate`` twice at once, and ``audit export``, through it.

The tests are test_drills.py's and test_brokers.py's own, imported: pytest resolves a test's
fixtures in the module it is collected in, so this module's ``partners``, ``private_postgres`` and
``fleet_on`` put a PgBouncer between the fleet and Postgres (the Redis broker), and its
``drill_options`` mark their rows " [pgbouncer]" in the drill table. Each of those fixtures checks
that the test's transactions were counted by its PgBouncer. Skipped, with the reason, where
pgbouncer is not installed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from offers_workers.local.embedded import EmbeddedPostgres
from offers_workers.local.pgbouncer import PgBouncer, unavailable
from offers_workers.local.stack import load_sample_policy
from offers_workers.store import audit_trail, db
from tasks.base import STORE_ERRORS
from tests.brokers import own_sandbox
from tests.conftest import SERVER, _create_database, _drop_database, cli, cli_at_once
from tests.drillkit import Drill, settings_for
from tests.integration import test_brokers as scenarios
from tests.integration import test_drills as drills

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")

LABEL = " [pgbouncer]"
#: Half the offers where half prove the same (``Drill.sized``): every scenario runs, in less time.
SCALE = 0.5

# The drills, with the fixtures of theirs this module keeps. Collected in the order bound here.
box = drills.box
clean_faults = drills.clean_faults
env = drills.env
test_flaky_partners_every_offer_reaches_its_outcome = drills.test_flaky_partners_every_offer_reaches_its_outcome
test_a_partner_slower_than_the_timeout_is_retried_and_recovers = (
    drills.test_a_partner_slower_than_the_timeout_is_retried_and_recovers
)
test_a_flushed_redis_delays_offers_and_the_sweep_completes_them = (
    drills.test_a_flushed_redis_delays_offers_and_the_sweep_completes_them
)
test_a_postgres_restart_mid_run_is_ridden_out_by_retries = (
    drills.test_a_postgres_restart_mid_run_is_ridden_out_by_retries
)


def transactions(bouncer: PgBouncer, database: str) -> int:
    """Transactions PgBouncer has passed to ``database`` since it started (its admin console's SHOW STATS)."""
    # The admin console speaks the simple query protocol only: a client-side cursor uses it.
    with psycopg.connect(
        bouncer.admin_url, autocommit=True, cursor_factory=psycopg.ClientCursor, row_factory=dict_row
    ) as conn:
        return sum(int(r["total_xact_count"]) for r in conn.execute("SHOW STATS") if r["database"] == database)


@contextmanager
def through(bouncer: PgBouncer, database: str) -> Iterator[None]:
    """Proof that the block's work on ``database`` went through ``bouncer``, not straight to Postgres."""
    before = transactions(bouncer, database)
    yield
    passed = transactions(bouncer, database) - before
    assert passed > 0, f"no transaction on {database} went through PgBouncer: the fixtures did not take"


def dbname(url: str) -> str:
    return str(conninfo_to_dict(url)["dbname"])


@pytest.fixture(scope="module")
def pooler(stores: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of the run's Postgres server."""
    bouncer = PgBouncer(SERVER["url"], tmp_path_factory.mktemp("pooler"))
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture(scope="module")
def drills_env(offers_env: dict[str, str], pooler: PgBouncer) -> Iterator[dict[str, str]]:
    """The run's environment with a database of the drills' own, migrated and loaded through the pooler."""
    url, name = _create_database(SERVER["url"], suffix="pgb_drills")
    try:
        env = {**offers_env, "OFFERS_DATABASE_URL": pooler.url_for(url)}
        db.migrate(env["OFFERS_DATABASE_URL"])
        load_sample_policy(settings_for(env))
        yield env
    finally:
        _drop_database(SERVER["url"], name)


@pytest.fixture
def partners(
    request: pytest.FixtureRequest, drills_env: dict[str, str], pooler: PgBouncer, tmp_path: Path
) -> Iterator[tuple[Any, dict[str, str]]]:
    """test_drills.py's ``partners``, with the environment's database behind the pooler."""
    with own_sandbox(drills_env, tmp_path / "sandbox") as pair:
        if "private_postgres" in request.fixturenames:
            yield pair  # that drill's Postgres is its own, behind a PgBouncer of its own (checked there)
            return
        with through(pooler, dbname(drills_env["OFFERS_DATABASE_URL"])):
            yield pair


@pytest.fixture
def drill_options() -> dict[str, Any]:
    return {"label": LABEL, "scale": SCALE}


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[tuple[str, Callable[[float], None]]]:
    """The restart drill's own Postgres behind a PgBouncer of its own: the drill restarts
    Postgres, and PgBouncer stays up in front of it."""
    with ExitStack() as stack:
        private = EmbeddedPostgres(tmp_path / "pg")
        stack.callback(private.stop)
        bouncer = PgBouncer(private.start(), tmp_path)
        stack.callback(bouncer.stop)
        url = bouncer.start()

        def restart(downtime_s: float) -> None:
            # Returns, as a direct restart does, once the database answers again, here through
            # PgBouncer: it tries a failed server login again only after server_login_retry (15 s),
            # refusing its clients meanwhile (the fleet retries; the drill's own reads would fail).
            private.restart(downtime_s)
            answers(url, timeout=60)

        with through(bouncer, dbname(url)):
            yield url, restart


def answers(url: str, timeout: float) -> None:
    """Wait until a query on ``url`` succeeds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            assert time.monotonic() < deadline, f"{url} did not answer within {timeout:.0f} s"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def pooled_fleet(
    offers_env: dict[str, str], pooler: PgBouncer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Drill]:
    """test_brokers.py's fleet on the Redis broker, its database (made on the server) migrated and
    used through the pooler."""
    log_dir = tmp_path_factory.mktemp("fleet-pgbouncer")
    with scenarios.scenario_fleet(
        offers_env, "redis", log_dir, name="pgbouncer", database_via=pooler.url_for, label=LABEL, scale=SCALE
    ) as d:
        url = conninfo_to_dict(d.env["OFFERS_DATABASE_URL"])
        assert (url["host"], url["port"]) == ("127.0.0.1", str(pooler.port)), d.env["OFFERS_DATABASE_URL"]
        yield d


@pytest.fixture
def fleet_on(pooled_fleet: Drill, pooler: PgBouncer) -> Iterator[Drill]:
    """What test_brokers.py's scenarios run on, here: the pooled fleet, its work counted by PgBouncer."""
    with through(pooler, dbname(pooled_fleet.env["OFFERS_DATABASE_URL"])):
        yield pooled_fleet


@pytest.fixture
def pooled_database(offers_env: dict[str, str], pooler: PgBouncer) -> Iterator[tuple[str, str]]:
    """A new, empty database on the run's server: its URL there and through the pooler."""
    url, name = _create_database(SERVER["url"], suffix="pgb_new")
    try:
        with through(pooler, name):
            yield url, pooler.url_for(url)
    finally:
        _drop_database(SERVER["url"], name)


def schema(url: str) -> dict[str, list[Any]]:
    """What the migrations make: columns, indexes, triggers, functions and applied versions."""
    with psycopg.connect(url) as conn:
        return {
            "columns": conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns"
                " WHERE table_schema = 'public' ORDER BY 1, 2"
            ).fetchall(),
            "indexes": conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
            ).fetchall(),
            "triggers": conn.execute(
                "SELECT event_object_table, trigger_name, event_manipulation, action_statement"
                " FROM information_schema.triggers WHERE trigger_schema = 'public' ORDER BY 1, 2, 3"
            ).fetchall(),
            "functions": conn.execute(
                "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = 'public' ORDER BY 1"
            ).fetchall(),
            "versions": conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1").fetchall(),
        }


def test_two_migrations_at_once_through_the_pooler_apply_each_migration_once(
    pooled_database: tuple[str, str], offers_env: dict[str, str]
) -> None:
    direct, pooled = pooled_database
    # When two release phases migrate a new database at once, both through PgBouncer
    runs = cli_at_once("db", "migrate", env={"OFFERS_DATABASE_URL": pooled}, timeout=120)
    # Then both succeed, and between them they applied every migration exactly once
    assert [run.returncode for run in runs] == [0, 0], [run.stderr[-800:] for run in runs]
    applied = sorted(line for run in runs for line in run.stdout.splitlines() if line.startswith("applied "))
    assert applied == [f"applied {m.version:04d}_{m.name}" for m in db.migrations()]
    # and the schema is the one a direct migration makes (the run's database)
    assert schema(direct) == schema(SERVER["owner"])


def test_audit_export_through_the_pooler(pooled_database: tuple[str, str]) -> None:
    _, pooled = pooled_database
    env = {"OFFERS_DATABASE_URL": pooled}
    assert cli("db", "migrate", env=env).returncode == 0
    # Given audit rows, written through the pooler
    with db.connect(pooled, autocommit=True) as conn:
        for n in range(5):
            audit_trail.record_audit(conn, f"off_{n}", "transition", actor="test", to_state="received")
    until = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    # When one export holds the lock, a second one (another client of the pooler) finds it taken
    with audit_trail.export_lock(pooled) as locked:
        assert locked
        busy = cli("audit", "export", "--until", until, env=env)
    assert busy.returncode == 1 and "another audit export is running" in busy.stderr, busy.stderr
    # Then, the lock free again, the export runs, and it verifies against the chain
    done = cli("audit", "export", "--until", until, env=env)
    assert done.returncode == 0, done.stderr
    [job] = json.loads(cli("audit", "exports", "--json", env=env).stdout)
    assert (job["status"], job["row_count"], job["attempts"]) == ("done", 5, 1)
    verified = cli("audit", "verify", str(job["id"]), env=env)
    assert verified.returncode == 0, verified.stderr
    chain = cli("audit", "verify-chain", env=env)
    assert chain.returncode == 0 and "5 rows" in chain.stdout, chain.stderr
    again = cli("audit", "export", "--until", until, env=env)
    assert again.returncode == 0 and "nothing to export" in again.stdout


def test_the_export_lock_outlasts_the_poolers_idle_transaction_timeout(scratch_database: str, tmp_path: Path) -> None:
    direct = scratch_database
    # Given a PgBouncer that ends a transaction idle for 2 s (the guide advises 15)
    strict = PgBouncer(SERVER["url"], tmp_path, idle_transaction_timeout_s=2)
    strict.start()
    try:
        pooled = strict.url_for(direct)
        # When an export holds the lock three times that long
        with audit_trail.export_lock(pooled, heartbeat_s=0.5) as locked:
            assert locked
            time.sleep(4)
            # Then another export still finds it taken
            with audit_trail.export_lock(pooled) as second:
                assert second is False
            time.sleep(2)
        # and the holder let it go cleanly: the next one gets it
        with audit_trail.export_lock(pooled) as third:
            assert third
    finally:
        strict.stop()


def test_a_server_connection_lost_mid_transaction_is_a_store_outage(pooled_database: tuple[str, str]) -> None:
    direct, pooled = pooled_database
    database = db.Database(pooled, max_size=1, wait_s=5)
    try:
        # Given a transaction through PgBouncer whose server connection Postgres then ends
        with pytest.raises(STORE_ERRORS) as lost, database.transaction() as conn:
            pid = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
            with psycopg.connect(direct, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                    time.sleep(0.05)
            time.sleep(0.2)  # PgBouncer reads the server's goodbye and closes the client
        # Then its COMMIT fails as an outage the tasks retry, not as an unexpected error they
        # dead-letter: PgBouncer passes on Postgres's error and adds its own, two results for one
        # command, which psycopg calls an InternalError
        assert isinstance(lost.value.__cause__, psycopg.InternalError), repr(lost.value)
        # and the pool serves again with a new connection
        with database.transaction() as conn:
            assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
    finally:
        database.close()


# The broker scenarios last: their fleet (module-scoped) starts with the first and is not left
# running through the drills above.
test_every_outcome_path_with_duplicate_deliveries = scenarios.test_every_outcome_path_with_duplicate_deliveries
test_killed_workers_lose_nothing_and_hold_no_buyer_twice = (
    scenarios.test_killed_workers_lose_nothing_and_hold_no_buyer_twice
)
test_a_partner_outage_dead_letters_and_a_replay_submits_each_offer_once = (
    scenarios.test_a_partner_outage_dead_letters_and_a_replay_submits_each_offer_once
)
test_cancellations_racing_the_saga_end_cancelled_once = scenarios.test_cancellations_racing_the_saga_end_cancelled_once
test_a_poison_message_ends_in_our_dead_letter_queue = scenarios.test_a_poison_message_ends_in_our_dead_letter_queue
test_stats_reads_the_queue_depths_from_the_broker = scenarios.test_stats_reads_the_queue_depths_from_the_broker
