"""The audit trail: appending rows, an offer's history, sealing rows into the chain and reading the
chain in id order.

Rows are appended unlinked in the writer's transaction; ``seal_step`` links them into the hash chain
after they commit (migration 0010 says why that order is safe). Readers of the chain see sealed
rows only. ``saga.trail`` seals, checks and exports it.
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

from offers_workers.domain.states import State
from offers_workers.store.db import Connection, connect, fields_row, one_row, typed

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


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit row of an offer as the saga reads it: what happened, moved from where to where."""

    id: int
    at: datetime
    kind: str
    #: Set on a ``transition`` row (``from_state`` None on the offer's first).
    from_state: State | None
    to_state: State | None
    reason: str | None
    actor: str
    data: dict[str, Any]


def offer_trail(conn: Connection, offer_id: str) -> list[AuditEvent]:
    """Every audit row of one offer, oldest first."""
    return (
        typed(conn, AuditEvent)
        .execute(
            "SELECT id, at, kind, from_state, to_state, reason, actor, data FROM audit_events"
            " WHERE offer_id = %s ORDER BY id",
            (offer_id,),
        )
        .fetchall()
    )


def offer_states(conn: Connection, offer_id: str) -> list[State]:
    """The states the offer's trail shows it entered, in order (a replayed offer's twice)."""
    return [e.to_state for e in offer_trail(conn, offer_id) if e.kind == "transition" and e.to_state is not None]


@dataclass(frozen=True, slots=True)
class HistoryStep:
    """One state the offer entered, as `offers show` prints it: when, why and by whom."""

    state: State
    at: datetime
    reason: str | None
    by: str

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state, "at": self.at.isoformat(), "reason": self.reason, "by": self.by}


def offer_history(conn: Connection, offer_id: str) -> list[HistoryStep]:
    """The offer's states in order, as `offers show` prints them."""
    return (
        typed(conn, HistoryStep)
        .execute(
            "SELECT to_state AS state, at, reason, actor AS by FROM audit_events"
            " WHERE offer_id = %s AND kind = 'transition' ORDER BY id",
            (offer_id,),
        )
        .fetchall()
    )


@dataclass(frozen=True, slots=True)
class TrailRow:
    """One row of the hash chain, as exported and hashed: ``data`` as the text the chain hashed,
    ``prev_hash`` and ``row_hash`` None until the sealer links it."""

    id: int
    at: datetime
    offer_id: str | None
    kind: str
    from_state: str | None
    to_state: str | None
    reason: str | None
    actor: str
    data: str
    prev_hash: str | None
    row_hash: str | None

    def as_json(self) -> dict[str, Any]:
        """The row as an export line holds it (``ROW_COLUMNS``' order, ``at`` in ISO 8601)."""
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "offer_id": self.offer_id,
            "kind": self.kind,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "reason": self.reason,
            "actor": self.actor,
            "data": self.data,
            "prev_hash": self.prev_hash,
            "row_hash": self.row_hash,
        }

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> TrailRow:
        """A row read back from an export line (``as_json``)."""
        return cls(
            id=line["id"],
            at=datetime.fromisoformat(line["at"]),
            offer_id=line["offer_id"],
            kind=line["kind"],
            from_state=line["from_state"],
            to_state=line["to_state"],
            reason=line["reason"],
            actor=line["actor"],
            data=line["data"],
            prev_hash=line["prev_hash"],
            row_hash=line["row_hash"],
        )


def _stream(conn: Connection, where: sql.Composable, params: tuple[Any, ...]) -> Iterator[TrailRow]:
    """Trail rows in id order through a server-side cursor: memory stays flat however many rows."""
    query = sql.SQL("SELECT {} FROM audit_events WHERE {} ORDER BY id").format(ROW_COLUMNS, where)
    with conn.cursor(name="audit_rows", row_factory=fields_row(TrailRow)) as cur:
        cur.itersize = BATCH
        cur.execute(query, params)
        yield from cur


#: Rows the chain holds: linked by the sealer.
SEALED = sql.SQL("id <= (SELECT sealed_through FROM audit_seal)")


def every_row(conn: Connection) -> Iterator[TrailRow]:
    """The whole sealed trail, from its first row."""
    return _stream(conn, SEALED, ())


def rows_since(conn: Connection, since: datetime) -> Iterator[TrailRow]:
    """The sealed trail from its first row at or after ``since``."""
    return _stream(conn, sql.SQL("at >= %s AND {}").format(SEALED), (since,))


def rows_between(conn: Connection, first_id: int, last_id: int) -> Iterator[TrailRow]:
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
