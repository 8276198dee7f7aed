"""Postgres access: one connection pool per process, and the versioned migrations.

Postgres is the source of truth. Every statement is parametrised; identifiers that vary come from
code (never input) and go through ``psycopg.sql.Identifier``.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import select
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import RowFactory, RowMaker, dict_row, no_result
from psycopg_pool import ConnectionPool

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger(__name__)

#: A connection the store is handed. Pooled ones return dict rows (``dict_row``); the row type is left
#: open so a caller's plain ``psycopg.Connection`` fits, and the store's functions return typed values.
Connection: TypeAlias = psycopg.Connection[Any]

#: Advisory lock key that serialises `db migrate` across processes ("offersmg" in ASCII).
MIGRATION_LOCK_KEY = 0x6F66666572736D67


def connect(url: str, *, prepared_statements: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection of its own (not pooled), safe behind PgBouncer in transaction mode.

    psycopg prepares a statement on the server after its fifth run; a transaction pooler then hands
    the server connection to another client, and the next run fails ("prepared statement _pg3_0
    does not exist"). ``prepared_statements`` turns them back on, for a direct connection or a
    pooler that tracks them (PgBouncer 1.21+ with max_prepared_statements).
    """
    return psycopg.connect(url, prepare_threshold=None if not prepared_statements else 5, **kwargs)


#: How long the pool's reconnection attempts back off before it starts them afresh (``_retry_now``).
RECONNECT_ROUND_S = 2.0


def _check_if_readable(conn: psycopg.Connection) -> None:
    """Probe a pooled connection only if the server has said something since it was last used.

    An idle, healthy connection has nothing to read. A server shutting down sends its goodbye and
    closes the socket, which makes it readable: only then is the round-trip probe worth paying. A
    connection that died silently still fails its first statement, and the task retries.
    """
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        ConnectionPool.check_connection(conn)


def _retry_now(pool: ConnectionPool) -> None:
    """A round of reconnection attempts failed: start the next one now (``check`` grows an empty pool)."""
    if not pool.closed:
        pool.check()


class Database:
    """A lazily opened connection pool. Safe to share between threads; re-opened after fork."""

    def __init__(
        self,
        url: str,
        *,
        max_size: int = 4,
        idle_in_transaction_timeout_s: int = 15,
        lock_timeout_s: float = 10,
        wait_s: float = 10,
        prepared_statements: bool = False,
        application_name: str | None = None,
    ) -> None:
        self.url = url
        self.max_size = max_size
        #: What pg_stat_activity shows for this pool's connections, unless the URL names one itself.
        self.application_name = None if "application_name" in conninfo_to_dict(url) else application_name
        #: Server-side prepared statements (see ``connect``): off unless the deployment says so.
        self.prepared_statements = prepared_statements
        #: How long a caller waits for a pooled connection before PoolTimeout.
        self.wait_s = wait_s
        self.idle_in_transaction_timeout_s = idle_in_transaction_timeout_s
        self.lock_timeout_s = lock_timeout_s
        self._pool: ConnectionPool | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    @property
    def pool(self) -> ConnectionPool:
        if self._pid != os.getpid():
            # A pool inherited through fork shares sockets with the parent, and the lock may be held
            # there by a thread this child does not have: start afresh (a child starts with one thread).
            self._pid, self._pool, self._lock = os.getpid(), None, threading.Lock()
        if self._pool is None:
            # A thread pool's threads start their first tasks together: one builds the pool, the
            # others wait for it. Each building its own opened up to one pool per thread.
            with self._lock:
                if self._pool is None:
                    self._pool = self._new_pool()
        return self._pool

    def _new_pool(self) -> ConnectionPool:
        return ConnectionPool(
            self.url,
            min_size=1,
            max_size=self.max_size,
            kwargs={
                "row_factory": dict_row,
                "autocommit": False,
                "prepare_threshold": 5 if self.prepared_statements else None,
                **({"application_name": self.application_name} if self.application_name else {}),
            },
            # Drop connections that died with a Postgres restart instead of handing them out,
            # without a round trip per checkout (the largest single cost in the bench's profile).
            check=_check_if_readable,
            configure=self._configure,
            # While Postgres is away a task gives up waiting and retries, instead of blocking.
            timeout=self.wait_s,
            # psycopg_pool doubles the wait between attempts (1, 2, 4, 8 s...): after a failover the
            # promoted standby would be found as late again as the outage had lasted. Short rounds of
            # attempts, each followed at once by a fresh one, try about every second instead.
            reconnect_timeout=RECONNECT_ROUND_S,
            reconnect_failed=_retry_now,
            open=True,
            name="offers",
        )

    def _configure(self, conn: psycopg.Connection) -> None:
        # Session settings, not startup options: poolers such as PgBouncer refuse unknown ones.
        # Behind a transaction pooler they land on whichever server connection runs them (the same
        # values for every client of ours); the operations guide says what to set there instead.
        # A host that vanishes mid-transaction (its COMMIT lost on the wire) would otherwise hold
        # its locks, the audit chain's among them, until TCP gives up; and every session waiting
        # behind it would take the lock in turn and vanish with it too.
        conn.execute(
            psycopg.sql.SQL("SET idle_in_transaction_session_timeout = {}; SET lock_timeout = {}").format(
                psycopg.sql.Literal(f"{self.idle_in_transaction_timeout_s}s"),
                psycopg.sql.Literal(f"{int(self.lock_timeout_s * 1000)}ms"),
            )
        )
        conn.commit()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection inside one transaction: committed on success, rolled back on error."""
        with self._connection() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads outside a transaction: each statement is one round trip, with no
        BEGIN and COMMIT around it. Only for reads that need no consistent snapshot across statements."""
        with self.autocommit() as conn:
            yield conn

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection on which each statement is a transaction of its own: one round trip where
        BEGIN, the statement and COMMIT take three. For a write that is one statement (a guarded
        transition and its audit row, say), and for reads as ``read`` says."""
        with self._connection() as conn:
            conn.autocommit = True
            try:
                yield conn
            finally:
                # A statement cut off mid-flight (a warm shutdown's signal in a solo worker) leaves the
                # connection busy: psycopg refuses to switch it, and that error would replace the
                # one that matters. The pool discards a connection returned busy.
                if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                    conn.autocommit = False

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        """A pooled connection. An error that leaves it broken is raised as an OperationalError, the
        outage it is, whatever psycopg calls it.

        Through PgBouncer, a server connection that dies mid-transaction reaches the client as two
        errors for one command, Postgres's and PgBouncer's own ("server conn crashed?"), and psycopg
        reports them as InternalError("received 2 results from command 'COMMIT'"), which a task
        would dead-letter (or, failing again on the dead letter, drop) instead of retrying.
        """
        conn: Connection | None = None
        try:
            with self.pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            if conn is not None and conn.broken and not isinstance(exc, psycopg.OperationalError):
                raise psycopg.OperationalError(f"the connection to Postgres was lost: {exc}") from exc
            raise

    def close(self) -> None:
        if self._pool is not None and self._pid == os.getpid():
            self._pool.close()
        self._pool = None


def one_row(cursor: psycopg.Cursor[Any]) -> dict[str, Any]:
    """The row of a statement that always returns one (an aggregate, or RETURNING of a row it wrote)."""
    row = cursor.fetchone()
    if row is None:
        raise LookupError("the statement returned no row")
    return dict(row)


Row = TypeVar("Row", bound="DataclassInstance")


def fields_row(cls: type[Row]) -> RowFactory[Row]:
    """A row factory that builds ``cls`` from the columns named like its fields.

    Like psycopg's ``class_row``, but columns the dataclass does not name are left out: a
    ``SELECT *`` keeps working when a migration adds a column.
    """
    names = {f.name for f in fields(cls)}

    def factory(cursor: psycopg.cursor.BaseCursor[Any, Any]) -> RowMaker[Row]:
        description = cursor.description
        if description is None:
            return no_result
        picked = [(i, c.name) for i, c in enumerate(description) if c.name in names]

        def make(values: Sequence[Any]) -> Row:
            return cls(**{name: values[i] for i, name in picked})

        return make

    return factory


def typed(conn: Connection, cls: type[Row]) -> psycopg.Cursor[Row]:
    """A cursor on ``conn`` whose rows are ``cls`` (``fields_row``), whatever rows the connection makes."""
    return conn.cursor(row_factory=fields_row(cls))


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("offers_workers.store.migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def migrate(url: str, *, through: int | None = None) -> list[Migration]:
    """Apply the migrations not applied yet (up to version ``through``, if given); returns those
    it applied.

    All in one transaction that first takes a transaction-scoped advisory lock: safe to run twice,
    from two processes at once (the second waits, then finds nothing left to do) and through
    PgBouncer in transaction mode, where a session lock would not stay with its session.
    """
    applied: list[Migration] = []
    with connect(url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for migration in migrations():
            if through is not None and migration.version > through:
                break
            if migration.version in done:
                continue
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (migration.version, migration.name)
            )
            applied.append(migration)
    for migration in applied:
        log.info("applied migration %04d_%s", migration.version, migration.name)
    return applied


def restrict_audit_trail(url: str, role: str) -> None:
    """Let ``role`` (the fleet's login) append to and read the audit trail, and nothing else there."""
    name = sql.Identifier(role)
    with connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM {}").format(name))
        conn.execute(sql.SQL("GRANT SELECT, INSERT ON audit_events TO {}").format(name))
        conn.execute(sql.SQL("GRANT USAGE, SELECT ON SEQUENCE audit_events_id_seq TO {}").format(name))
        # The sealer links rows: only the hash columns, and the append-only trigger lets it set them
        # once, to the hash the row's content gives.
        conn.execute(sql.SQL("GRANT UPDATE (prev_hash, row_hash) ON audit_events TO {}").format(name))
        conn.execute(sql.SQL("GRANT SELECT, UPDATE ON audit_seal TO {}").format(name))


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A fresh database on the configured server for one run, dropped afterwards.

    Figures must not depend on what earlier runs left behind: each offer updates its row six times,
    and on a server without autovacuum the dead rows of old runs made the recovery sweep's scans
    (every 30 s, on a core worker child) slower run after run.
    """
    name = f"offers_bench_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
