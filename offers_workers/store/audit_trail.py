"""The audit trail: appending rows, an offer's history, sealing rows into the chain and reading the
chain in id order.

Rows are appended unlinked in the writer's transaction; ``seal_step`` links them into the hash chain
after they commit (migration 0010 says why that order is safe). Readers of the chain see sealed
rows only. ``saga.audit`` seals, checks and exports it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from offers_workers.store.db import Connection, connect, one_row

log = logging.getLogger(__name__)

#: The columns of an exported row, ``data`` as the text the chain hashed.
ROW_COLUMNS = sql.SQL(
    "id, at, offer_id, kind, from_state, to_state, reason, actor, data::text AS data, prev_hash, row_hash"
)
#: Rows fetched per round trip while streaming.
BATCH = 2000
#: Advisory lock: one export at a time across the fleet ("auditexp" in ASCII).
EXPORT_LOCK = 0x6175646974657870


def record_audit(
    conn: Connection,
    offer_id: str | None,
    kind: str,
    *,
    actor: str,
    from_state: str | None = None,
    to_state: str | None = None,
    reason: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Append one row to the trail in the caller's transaction."""
    conn.execute(
        "INSERT INTO audit_events (offer_id, kind, from_state, to_state, reason, actor, data)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (offer_id, kind, from_state, to_state, reason, actor, Jsonb(data or {})),
    )


def offer_trail(conn: Connection, offer_id: str) -> list[dict[str, Any]]:
    """Every audit row of one offer, oldest first."""
    return conn.execute(
        "SELECT id, at, kind, from_state, to_state, reason, actor, data FROM audit_events"
        " WHERE offer_id = %s ORDER BY id",
        (offer_id,),
    ).fetchall()


def offer_history(conn: Connection, offer_id: str) -> list[dict[str, Any]]:
    """The offer's states in order, as `offers show` prints them."""
    rows = conn.execute(
        "SELECT to_state, at, reason, actor FROM audit_events WHERE offer_id = %s AND kind = 'transition' ORDER BY id",
        (offer_id,),
    ).fetchall()
    return [{"state": r["to_state"], "at": r["at"].isoformat(), "reason": r["reason"], "by": r["actor"]} for r in rows]


def _stream(conn: Connection, where: sql.Composable, params: tuple[Any, ...]) -> Iterator[dict[str, Any]]:
    """Audit rows in id order through a server-side cursor: memory stays flat however many rows."""
    query = sql.SQL("SELECT {} FROM audit_events WHERE {} ORDER BY id").format(ROW_COLUMNS, where)
    with conn.cursor(name="audit_rows") as cur:
        cur.itersize = BATCH
        cur.execute(query, params)
        yield from cur


#: Rows the chain holds: linked by the sealer.
SEALED = sql.SQL("id <= (SELECT sealed_through FROM audit_seal)")


def every_row(conn: Connection) -> Iterator[dict[str, Any]]:
    """The whole sealed trail, from its first row."""
    return _stream(conn, SEALED, ())


def rows_since(conn: Connection, since: datetime) -> Iterator[dict[str, Any]]:
    """The sealed trail from its first row at or after ``since``."""
    return _stream(conn, sql.SQL("at >= %s AND {}").format(SEALED), (since,))


def rows_between(conn: Connection, first_id: int, last_id: int) -> Iterator[dict[str, Any]]:
    """The rows with ids ``first_id`` to ``last_id``, both included."""
    return _stream(conn, sql.SQL("id BETWEEN %s AND %s"), (first_id, last_id))


@contextmanager
def export_lock(database_url: str | None, *, heartbeat_s: float = 5) -> Iterator[bool]:
    """Hold the fleet-wide export lock for the block; yields False (and holds nothing) when another
    export has it.

    The lock is transaction-scoped, in a transaction of its own held open for the block: a
    transaction pooler (PgBouncer in transaction mode) keeps one server connection for it, where a
    session lock would stay behind on a server connection handed to someone else. The transaction
    writes nothing, so it holds back neither vacuum nor the audit sealer. A statement every
    ``heartbeat_s`` keeps it from looking idle: PgBouncer's idle_transaction_timeout (15 s, as the
    operations guide advises) would otherwise end it, and the lock with it, mid-export.
    """
    with connect(database_url or "") as conn:
        # An idle-looking transaction is the point here: no server or role timeout may end it.
        conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
        row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (EXPORT_LOCK,)).fetchone()
        if not (row and row[0]):
            conn.rollback()
            yield False
            return
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(heartbeat_s):
                try:
                    conn.execute("SELECT 1")
                except psycopg.Error as exc:
                    log.error("the audit export lost its lock's connection", extra={"error": str(exc)[:300]})
                    return

        beating = threading.Thread(target=heartbeat, name="export-lock-heartbeat", daemon=True)
        beating.start()
        try:
            yield True
        finally:
            done.set()
            beating.join()
            if not conn.closed:
                conn.rollback()


@dataclass(frozen=True)
class RowWindow:
    """Audit rows an export takes: ids ``first`` to ``last``, ``rows`` of them (0: none), the
    earliest written at ``first_at``."""

    first: int | None
    last: int | None
    rows: int
    first_at: datetime | None = None


def rows_to_export(conn: Connection, after_id: int, until: datetime) -> RowWindow:
    """The sealed rows after id ``after_id`` written before ``until``."""
    row = one_row(
        conn.execute(
            "SELECT min(id) AS first, max(id) AS last, count(*) AS n, min(at) AS first_at"
            " FROM audit_events WHERE id > %s AND at < %s AND id <= (SELECT sealed_through FROM audit_seal)",
            (after_id, until),
        )
    )
    return RowWindow(row["first"], row["last"], row["n"], row["first_at"])


@dataclass(frozen=True)
class ChainEnds:
    """What Postgres holds for an id range: how many rows, the link into its first, its last hash."""

    rows: int
    first_prev_hash: str | None
    last_hash: str | None


def row_hash(conn: Connection, row_id: int) -> str | None:
    """The chain's hash at row ``row_id`` (None: no such row, or not sealed)."""
    row = conn.execute("SELECT row_hash FROM audit_events WHERE id = %s", (row_id,)).fetchone()
    return row["row_hash"] if row else None


def chain_ends(conn: Connection, first_id: int, last_id: int) -> ChainEnds:
    row = one_row(
        conn.execute(
            "SELECT count(*) AS n, (SELECT row_hash FROM audit_events WHERE id = %(last)s) AS last_hash,"
            " (SELECT prev_hash FROM audit_events WHERE id = %(first)s) AS first_prev"
            " FROM audit_events WHERE id BETWEEN %(first)s AND %(last)s",
            {"first": first_id, "last": last_id},
        )
    )
    return ChainEnds(row["n"], row["first_prev"], row["last_hash"])


# --- sealing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealStep:
    """One sealing step: rows linked, the chain's sealed end after it, and whether a window of rows
    is still waiting for its writers to finish."""

    linked: int
    sealed_through: int
    waiting: bool


def seal_step(conn: Connection) -> SealStep | None:
    """Link the pending window if its writers have all finished, then take the next window; in the
    caller's transaction, which must commit. None: another sealer is at work.

    The step is the database's ``audit_seal_step()`` (migration 0015), run as the schema's owner:
    the fleet's role may not write the sealer's state or the hash columns itself. It takes a row
    lock, not an advisory lock: that lives and dies with the transaction, so it holds behind a
    transaction pooler.
    """
    row = conn.execute("SELECT linked, sealed_through, waiting FROM audit_seal_step()").fetchone()
    if row is None:
        return None
    return SealStep(row["linked"], row["sealed_through"], waiting=row["waiting"])


def last_handed_out(conn: Connection) -> int:
    """The last row id handed out to a writer (its row may not be committed yet)."""
    return int(
        one_row(
            conn.execute(
                "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END AS id FROM audit_events_id_seq"
            )
        )["id"]
    )


@dataclass(frozen=True)
class SealLag:
    """How far sealing is behind: the chain's sealed end, when it last moved, and the committed
    rows past it (how many, and when the oldest was written)."""

    sealed_through: int
    sealed_at: datetime
    unsealed_rows: int
    oldest_unsealed_at: datetime | None
    #: The age of that oldest row, by the database's clock; 0 when every row is sealed.
    lag_seconds: float


def seal_lag(conn: Connection) -> SealLag:
    row = one_row(
        conn.execute(
            "SELECT s.sealed_through, s.sealed_at, count(e.id) AS n, min(e.at) AS oldest,"
            " coalesce(extract(epoch FROM clock_timestamp() - min(e.at)), 0)::float8 AS lag"
            " FROM audit_seal s LEFT JOIN audit_events e ON e.id > s.sealed_through"
            " GROUP BY s.sealed_through, s.sealed_at"
        )
    )
    return SealLag(row["sealed_through"], row["sealed_at"], row["n"], row["oldest"], max(row["lag"], 0.0))
