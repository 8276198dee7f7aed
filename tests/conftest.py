"""Shared fixtures: every test run gets its own Postgres database and Redis database, a sandbox
on free ports, and (for integration tests) the Procfile's worker processes, all stopped at the end.

With OFFERS_DATABASE_URL / OFFERS_BROKER_URL set (CI), the run makes a fresh database on that
server and claims an empty Redis database (0-15) on that Redis; without them it starts embedded
servers. Queue names are the contract and carry no prefix, so a Redis database of its own is what
keeps one fleet's queues from another's; the run's key prefix still marks the fleet's own keys.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg.conninfo import make_conninfo

from offers_workers.store import roles

RUN_ID = secrets.token_hex(4)
#: The Postgres server this run's database lives on (for tests that need a scratch database), and
#: the owner's login to the run's database ("owner").
SERVER: dict[str, str] = {}

#: Figures of the fault drills this process ran (tests/integration/test_drills.py and others).
DRILL_RESULTS: list[dict[str, Any]] = []
#: Every process's drill figures, as their test reports reached the process that prints the table
#: (with pytest-xdist, the tests run in worker processes and the controller prints the summary).
REPORTED_DRILLS: list[dict[str, Any]] = []

DRILL_COLUMNS = (
    "drill",
    "offers",
    "faults",
    "lost",
    "duplicate_holds",
    "orphan_holds",
    "dead_lettered",
    "retries",
    "swept",
    "drain_s",
    "chain",
)


#: Whether the sandbox's runtime role stood on the run's server before the run, by server URL.
_SANDBOX_ROLE_BEFORE: dict[str, bool] = {}


def _sandbox_role_exists(server_url: str) -> bool:
    with psycopg.connect(server_url, autocommit=True) as conn:
        return (
            conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (roles.SANDBOX_RUNTIME_ROLE,)).fetchone()
            is not None
        )


def pytest_sessionstart(session: pytest.Session) -> None:
    # Once per run, before any test process starts: `demo`, `dev` and `bench` make the sandbox's
    # runtime role on the server they are given, and several tests run them there.
    server_url = os.environ.get("OFFERS_DATABASE_URL")
    if server_url and not hasattr(session.config, "workerinput"):
        _SANDBOX_ROLE_BEFORE[server_url] = _sandbox_role_exists(server_url)


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Once every test process has ended: the role goes unless it stood before the run, or another
    # run's database still grants it something.
    for server_url, existed in _SANDBOX_ROLE_BEFORE.items():
        if not existed:
            with suppress(psycopg.errors.DependentObjectsStillExist):
                roles.drop_role(server_url, roles.SANDBOX_RUNTIME_ROLE)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """Attach the drills a test ran to its report, the one thing that travels back from an xdist worker."""
    before = len(DRILL_RESULTS)
    try:
        return (yield)
    finally:
        item.user_properties.extend(("drill", row) for row in DRILL_RESULTS[before:])


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        REPORTED_DRILLS.extend(value for key, value in report.user_properties if key == "drill")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORTED_DRILLS:
        return
    terminalreporter.section("fault drills")
    rows = [[str(r.get(c, "")) for c in DRILL_COLUMNS] for r in REPORTED_DRILLS]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(DRILL_COLUMNS)]
    for row in [list(DRILL_COLUMNS), *rows]:
        terminalreporter.write_line("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)))


def _create_database(server_url: str, suffix: str = "") -> tuple[str, str]:
    name = f"offers_test_{RUN_ID}" + (f"_{suffix}" if suffix else "")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    return make_conninfo(server_url, dbname=name), name


def _drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))


#: Marks a Redis database as taken by a test run (its value: the run and the process that took it).
REDIS_CLAIM_KEY = "offers-test:claim"


def _redis_url_with_db(url: str, number: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{number}"))


def _stale_claim(client: redis.Redis) -> bool:
    """A claim left by a test process that no longer runs (killed mid-run): its database is ours to take."""
    try:
        claim = json.loads(client.get(REDIS_CLAIM_KEY) or b"{}")
        os.kill(int(claim["pid"]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, KeyError, TypeError, PermissionError):
        return False
    return False


@contextmanager
def redis_database(server_url: str) -> Iterator[str]:
    """An empty Redis database of its own on the server of ``server_url``; yields its URL, flushed after.

    A database is taken only if it holds no key but the claim just made in it, so a run never
    touches what another run (or anything else) keeps on the same server.
    """
    probe = redis.Redis.from_url(server_url)
    try:
        count = int(probe.config_get("databases").get("databases", 16))
    except redis.ResponseError:  # CONFIG refused (a managed Redis): assume the default
        count = 16
    finally:
        probe.close()
    claim = json.dumps({"run": RUN_ID, "pid": os.getpid()})
    for number in range(1, count):
        url = _redis_url_with_db(server_url, number)
        client = redis.Redis.from_url(url)
        try:
            if client.exists(REDIS_CLAIM_KEY) and _stale_claim(client):
                client.flushdb()
            if client.set(REDIS_CLAIM_KEY, claim, nx=True):
                if client.dbsize() == 1:
                    break
                client.delete(REDIS_CLAIM_KEY)  # something else keeps keys here: not ours
        finally:
            client.close()
    else:
        raise RuntimeError(f"no empty Redis database left on {urlsplit(server_url).netloc} (of {count})")
    try:
        yield url
    finally:
        client = redis.Redis.from_url(url)
        try:
            client.flushdb()
        finally:
            client.close()


#: The fleet's database role in this run (roles are the server's: one per run, dropped at its end).
RUNTIME_ROLE = f"offers_rt_{RUN_ID}"


def migrate_for_fleet(env: dict[str, str]) -> None:
    """What `db migrate` does for this run's stores: migrate as the owner, grant the runtime role."""
    from offers_workers.store import db

    db.migrate(SERVER["owner"])
    roles.grant_runtime_role(SERVER["owner"], roles.login_role(env["OFFERS_DATABASE_URL"]))


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """OFFERS_DATABASE_URL, OFFERS_BROKER_URL (a Redis database) and OFFERS_REDIS_KEY_PREFIX private to this run."""
    from offers_workers.local.embedded import EmbeddedPostgres, EmbeddedRedis

    started: list[Any] = []
    state = tmp_path_factory.mktemp("stores")
    server_url = os.environ.get("OFFERS_DATABASE_URL")
    broker_url = os.environ.get("OFFERS_BROKER_URL")
    try:
        if not server_url:
            pg = EmbeddedPostgres(state)
            started.append(pg)
            server_url = pg.start()
        if not broker_url:
            rd = EmbeddedRedis(state)
            started.append(rd)
            broker_url = rd.start()
        SERVER["url"] = server_url
        SERVER["redis"] = broker_url
        db_url, db_name = _create_database(server_url)
        # Two logins, as a deployment has them: the fleet runs as a role of its own, which owns
        # nothing; the server's login owns the schema and is what `db migrate` uses.
        runtime_url = roles.provision_runtime_role(db_url, RUNTIME_ROLE)
        # Not the default prefix: the fleet's own keys must follow the setting, queues must not.
        prefix = f"offers-test-{RUN_ID}:"
        try:
            with redis_database(broker_url) as run_redis:
                # The owner's login is not in the environment: the fleet never holds it, and a
                # fleet of a test's own (another database) must not inherit it.
                SERVER["owner"] = db_url
                yield {
                    "OFFERS_DATABASE_URL": runtime_url,
                    "OFFERS_BROKER_URL": run_redis,
                    "OFFERS_REDIS_KEY_PREFIX": prefix,
                }
        finally:
            _drop_database(server_url, db_name)
            roles.drop_role(server_url, RUNTIME_ROLE)
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture
def scratch_database(stores: dict[str, str]) -> Iterator[str]:
    """A fresh, migrated database of its own, for tests that must tamper with or flood one."""
    from offers_workers.store import db

    url, name = _create_database(SERVER["url"], suffix=secrets.token_hex(3))
    try:
        db.migrate(url)
        yield url
    finally:
        _drop_database(SERVER["url"], name)


@pytest.fixture
def scratch_runtime(scratch_database: str) -> Iterator[str]:
    """The fleet's login to ``scratch_database``: a role of its own with the grants `db migrate` gives."""
    role = f"offers_rt_{RUN_ID}_{secrets.token_hex(3)}"
    url = roles.provision_runtime_role(scratch_database, role)
    try:
        roles.grant_runtime_role(scratch_database, role)
        yield url
    finally:
        with psycopg.connect(scratch_database, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(psycopg.sql.Identifier(role)))
        roles.drop_role(SERVER["url"], role)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Any]:
    from offers_workers.local.sandbox import Sandbox

    box = Sandbox(ports={"stripe": 0, "sift": 0, "plaid": 0, "aws": 0, "segment": 0})
    box.start()
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="session")
def offers_env(
    stores: dict[str, str], sandbox: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The environment of this run, applied to the test process (and handed to workers)."""
    from config import settings as settings_module
    from offers_workers.local.sandbox import ensure_aws_resources
    from offers_workers.local.stack import load_sample_policy

    env = {
        **stores,
        **sandbox.settings_env(),
        "OFFERS_STATE_DIR": str(tmp_path_factory.mktemp("state")),
        # Retry waits of seconds become tens of milliseconds: outage drills finish in test time.
        "OFFERS_RETRY_DELAY_SCALE": "0.02",
        # The run's fleets share one Stripe sandbox over many databases: to one fleet's beat, another's
        # holds belong to no offer. Reconciliation tests and drills set their own grace.
        "OFFERS_RECONCILE_GRACE_SECONDS": "86400",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    settings_module.get_settings.cache_clear()
    settings = settings_module.get_settings()
    migrate_for_fleet(env)
    load_sample_policy(settings)
    ensure_aws_resources(settings)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        settings_module.get_settings.cache_clear()


@pytest.fixture(scope="session")
def settings(offers_env: dict[str, str]):
    from config.settings import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def runtime(settings):
    from offers_workers.runtime import Runtime

    rt = Runtime(settings)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def celery_app(offers_env: dict[str, str]):
    from tasks.app import app

    return app


@pytest.fixture(scope="session")
def fleet(offers_env: dict[str, str], celery_app: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The Procfile's worker processes, as a deployment runs them."""
    from offers_workers.local.fleet import Fleet, read_procfile

    log_dir = tmp_path_factory.mktemp("fleet-logs")
    workers = [t for t in read_procfile() if t.is_worker]
    with Fleet(offers_env, log_dir) as running:
        for ptype in workers:
            running.start(ptype)
        deadline = time.monotonic() + 60
        while len(celery_app.control.ping(timeout=0.5) or []) < len(workers):
            assert not running.dead(), f"worker exited at start-up; logs in {log_dir}"
            assert time.monotonic() < deadline, f"workers did not answer a ping; logs in {log_dir}"
        yield running


def offer_rows(runtime: Any, offer_ids: list[str]) -> dict[str, dict[str, Any]]:
    """What a drill checks of each offer, read straight from Postgres: state, reason and hold."""
    with runtime.db.transaction() as conn:
        return {
            r["offer_id"]: r
            for r in conn.execute(
                "SELECT offer_id, state, reason, hold_status, payment_intent_id, payment_method FROM offers"
                " WHERE offer_id = ANY(%s)",
                (offer_ids,),
            )
        }


def new_id(prefix: str = "t") -> str:
    return f"{prefix}_{RUN_ID}_{secrets.token_hex(4)}"


def wait_until(predicate, timeout: float = 60, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)


def cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `offers-workers ARGS` as an operator would, in this run's environment (plus ``env``)."""
    return subprocess.run(
        [sys.executable, "-m", "offers_workers.ops.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=project_root(),
        env={**os.environ, **(env or {})},
    )


def cli_at_once(
    *args: str, terminals: int = 2, env: dict[str, str] | None = None, timeout: float = 120
) -> list[subprocess.CompletedProcess[str]]:
    """Run `offers-workers ARGS` from ``terminals`` terminals started together, as two operators racing would."""
    command = [sys.executable, "-m", "offers_workers.ops.cli", *args]
    started = [
        subprocess.Popen(
            command,
            cwd=project_root(),
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(terminals)
    ]
    # Started first, waited for after: the runs overlap
    outputs = [process.communicate(timeout=timeout) for process in started]
    return [
        subprocess.CompletedProcess(command, process.returncode, out, err)
        for process, (out, err) in zip(started, outputs, strict=True)
    ]


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent
