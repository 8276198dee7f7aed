"""The connection budget on real processes (docs/operations.md, section 3): each Procfile type opens
at most its pool, `stats`, `health` and `/metrics` count the server's connections against
max_connections, and a worker that cannot get a connection retries its stage under the store outage
budget, never dead-lettering for it.

Each test runs its fleet on a database of its own, owned by a login role made for it: a role that is
not a superuser, so that a connection limit binds it as it binds a deployment's.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from psycopg.conninfo import make_conninfo

from config.retry import STORE_OUTAGE, policy_for
from offers_workers.local.embedded import free_port
from offers_workers.local.stack import load_sample_policy
from offers_workers.runtime import APPLICATION_NAME_PREFIX, Runtime
from offers_workers.store import db
from tests import monitoring
from tests.conftest import RUN_ID, SERVER, cli, wait_until
from tests.drillkit import NO_RECOVERY, Drill, drill, settings_for


@dataclass(frozen=True)
class OwnDatabase:
    name: str
    #: As the fleet's role, whom a connection limit binds.
    url: str
    #: As the server's superuser, whom it does not: the test's own reads.
    admin_url: str


@contextmanager
def own_database(offers_env: dict[str, str], *, role_connection_limit: int = -1) -> Iterator[OwnDatabase]:
    """A database owned by a login role of the same name, migrated by that role and loaded with the
    sample policy; the database and the role are dropped afterwards, whatever happened."""
    server = SERVER["url"]
    name = f"offers_budget_{RUN_ID}_{secrets.token_hex(3)}"
    ident = sql.Identifier(name)
    password = secrets.token_hex(16)
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} CONNECTION LIMIT {}").format(
                ident, sql.Literal(password), sql.Literal(role_connection_limit)
            )
        )
    try:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident, ident))
        url = make_conninfo(server, dbname=name, user=name, password=password)
        db.migrate(url)
        load_sample_policy(settings_for({**offers_env, "OFFERS_DATABASE_URL": url}))
        yield OwnDatabase(name, url, make_conninfo(server, dbname=name))
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))


@contextmanager
def read_as_admin(d: Drill, database: OwnDatabase) -> Iterator[Drill]:
    """The drill, its checks reading Postgres as the superuser: outside the fleet role's limit."""
    rt = Runtime(settings_for({**d.env, "OFFERS_DATABASE_URL": database.admin_url}))
    try:
        yield replace(d, runtime=rt)
    finally:
        rt.close()


def fleet_connections(watch: psycopg.Connection, database: str) -> Counter[str]:
    """The fleet's connections to ``database`` now, by process type (its pools' application_name)."""
    rows = watch.execute(
        "SELECT application_name, count(*) FROM pg_stat_activity"
        " WHERE datname = %s AND starts_with(application_name, %s) GROUP BY 1",
        (database, APPLICATION_NAME_PREFIX),
    ).fetchall()
    return Counter({name.removeprefix(APPLICATION_NAME_PREFIX): n for name, n in rows})


def test_each_process_type_opens_at_most_its_pool_and_stats_health_metrics_count_them(
    offers_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    with (
        own_database(offers_env) as database,
        drill(
            "budget",
            offers_env,
            tmp_path / "logs",
            process_types=("worker", "worker_partners", "metrics"),
            OFFERS_DATABASE_URL=database.url,
            OFFERS_METRICS_PORT=str(port),
            # Set for one type only: it must reach the thread pool and nothing else.
            OFFERS_DB_POOL_SIZE_THREADS="3",
            **NO_RECOVERY,
        ) as fleet,
        read_as_admin(fleet, database) as d,
        psycopg.connect(database.admin_url, autocommit=True) as watch,
    ):
        # Given the Procfile's processes, nothing set but the thread pool's size, under a burst of offers
        samples = d.send(60, seed=41)
        peak: Counter[str] = Counter()
        deadline = time.monotonic() + 180
        while d.settled_count(samples) < len(samples):
            assert time.monotonic() < deadline, "the offers did not settle"
            peak |= fleet_connections(watch, database.name)
            time.sleep(0.05)
        d.figures.update(
            faults="none; OFFERS_DB_POOL_SIZE_THREADS=3; peak connections "
            + ", ".join(f"{kind} {n}" for kind, n in sorted(peak.items())),
            drain_s=round(time.monotonic() - d.started, 1),
        )
        d.verify(samples)
        text = wait_until(lambda: monitoring.read_metrics(port), timeout=30, message="/metrics")
        peak |= fleet_connections(watch, database.name)

        # Then each type stayed within processes × its pool: 2 prefork children × 1, one thread
        # pool × 3 (reached: 40 threads wanted more), one metrics process × 1
        assert 1 <= peak["prefork"] <= 2, peak
        assert peak["threads"] == 3, peak
        assert peak["metrics"] == 1, peak

        # and /metrics counts the server's connections against its limits, the fleet's by type
        families = {f.name: f for f in text_string_to_metric_families(text)}
        limits = watch.execute(
            "SELECT current_setting('max_connections')::int,"
            " current_setting('superuser_reserved_connections')::int"
            " + coalesce(current_setting('reserved_connections', true)::int, 0)"
        ).fetchone()
        assert limits is not None
        assert [s.value for s in families["offers_db_max_connections"].samples] == [limits[0]]
        assert [s.value for s in families["offers_db_reserved_connections"].samples] == [limits[1]]
        served = {s.labels["process"]: s.value for s in families["offers_db_fleet_connections"].samples}
        # The pools sit idle now, keeping their connections: the scrape saw what pg_stat_activity shows
        assert served == fleet_connections(watch, database.name), served
        in_use = sum(s.value for s in families["offers_db_connections"].samples)
        assert sum(served.values()) <= in_use <= limits[0]
        assert {s.labels["state"] for s in families["offers_db_connections"].samples} >= {"active", "idle"}

        # `stats --json` gives the same figures, and `health` checks them against max_connections
        env = {**d.env, "COLUMNS": "200"}
        stats = cli("stats", "--json", env=env)
        assert stats.returncode == 0, stats.stderr
        figures = json.loads(stats.stdout)["db_connections"]
        assert (figures["max_connections"], figures["reserved"]) == (limits[0], limits[1])
        assert figures["fleet_by_process"]["prefork"] == served["prefork"]
        health = cli("health", env=env)
        [row] = [line for line in health.stdout.splitlines() if "db_connections" in line]
        assert f" of {limits[0] - limits[1]} (" in row and "< 80% (warn), < 95%" in row, row


def test_threads_that_start_together_share_one_pool_of_its_size(offers_env: dict[str, str]) -> None:
    with own_database(offers_env) as database:
        settings = settings_for({**offers_env, "OFFERS_DATABASE_URL": database.url, "OFFERS_DB_POOL_SIZE_THREADS": "3"})
        rt = Runtime(settings, kind="threads")
        pools: set[int] = set()
        start = threading.Barrier(40)
        peak: Counter[str] = Counter()

        def first_task() -> None:
            start.wait()
            with rt.db.transaction() as conn:
                pools.add(id(rt.db.pool))
                conn.execute("SELECT pg_sleep(0.2)")

        try:
            # Given a thread pool's 40 threads taking their first task at the same instant
            threads = [threading.Thread(target=first_task) for _ in range(40)]
            with psycopg.connect(database.admin_url, autocommit=True) as watch:
                for t in threads:
                    t.start()
                while any(t.is_alive() for t in threads):
                    peak |= fleet_connections(watch, database.name)
                    time.sleep(0.02)
            for t in threads:
                t.join()
            # Then they built one pool between them, and it never held more than its size
            assert len(pools) == 1
            assert peak["threads"] == 3, peak
        finally:
            rt.close()


#: The fleet's role may open this many connections; the test holds them all, as other clients of a
#: full server would.
ROLE_LIMIT = 4


def test_a_worker_that_cannot_get_a_connection_retries_its_stage_and_never_dead_letters(
    offers_env: dict[str, str], tmp_path: Path
) -> None:
    intake_budget = policy_for("intake").max_retries
    with own_database(offers_env, role_connection_limit=ROLE_LIMIT) as database:
        held = [psycopg.connect(database.url) for _ in range(ROLE_LIMIT)]
        try:
            # (libpq reports the server's refusal at connect as a failed connection, without its SQLSTATE)
            with pytest.raises(psycopg.OperationalError, match="too many connections for role"):
                psycopg.connect(database.url).close()
            with (
                drill(
                    "starved",
                    offers_env,
                    tmp_path / "logs",
                    process_types=("worker", "worker_partners"),
                    OFFERS_DATABASE_URL=database.url,
                    **NO_RECOVERY,
                ) as fleet,
                read_as_admin(fleet, database) as d,
            ):
                # Given workers whose every connection attempt Postgres refuses (SQLSTATE 53300)
                # When two offers arrive, one for each prefork child
                samples = d.send(2, seed=43)

                # Then intake retries each under the store outage budget, past the attempt where its
                # own policy (for a partner's error) would have dead-lettered it; nothing recorded yet
                def starved() -> list[dict]:
                    return [r for r in d.logged("transient failure; retrying") if "get a connection" in r["error"]]

                wait_until(
                    lambda: any(r["stage"] == "intake" and r["attempt"] > intake_budget for r in starved()),
                    timeout=240,
                    message=f"an intake retry past its own budget of {intake_budget}",
                )
                assert intake_budget < STORE_OUTAGE.max_retries
                assert d.logged("stage failed; dead-lettered") == []
                assert d.settled_count(samples) == 0
                logs = "\n".join(p.read_text(errors="replace") for p in d.fleet.log_dir.glob("*worker*.log"))
                assert "too many connections for role" in logs  # what the pool was told each time

                # When the connections held elsewhere are given back
                for conn in held:
                    conn.close()
                released = time.monotonic()

                # Then every offer ends as it was built to, none dead-lettered and none lost, with
                # one hold each
                d.drain(samples, timeout=300)
                d.figures["faults"] = (
                    f"the role's {ROLE_LIMIT} connections held for {released - d.started:.0f} s;"
                    f" {len(starved())} retries waiting for one"
                )
                d.verify(samples)
                with d.runtime.db.read() as conn:
                    dead = conn.execute("SELECT count(*) AS n FROM dead_letters").fetchone()
                assert dead is not None and dead["n"] == 0
                assert d.logged("stage failed; dead-lettered") == []
        finally:
            for conn in held:
                conn.close()


def test_no_test_leaves_a_role_behind(offers_env: dict[str, str]) -> None:
    # The roles above are server-wide: each is dropped with its database
    with psycopg.connect(SERVER["url"], autocommit=True) as admin:
        left = admin.execute(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (f"offers_budget_{RUN_ID}_",)
        ).fetchall()
    assert left == [], left


def test_a_statement_cut_off_by_a_signal_surfaces_as_that_signal_not_a_psycopg_error(settings) -> None:
    # A solo worker's warm shutdown raises in the task's own thread, mid-statement. What the task
    # must see is the shutdown (its message is then redelivered), not "can't change 'autocommit'
    # now", which it would take for a bug in its SQL and dead-letter the offer.
    import signal

    from offers_workers.store.db import Database

    class Shutdown(Exception):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise Shutdown

    database = Database(settings.database_url, max_size=1)
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Shutdown), database.read() as conn:
            conn.execute("SELECT pg_sleep(2)")
        signal.setitimer(signal.ITIMER_REAL, 0)
        # and the pool hands out a working connection afterwards
        with database.read() as conn:
            assert conn.execute("SELECT 1 AS one").fetchone()["one"] == 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        database.close()
