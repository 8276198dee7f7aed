"""Dead-letter entries, one queue per stage: failures recorded, replayed or discarded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from offers_workers.store.db import Connection, one_row

#: Entries of a stage (or every stage) in a status (or any), unordered: `entries` and `dlq list` read them.
ENTRIES = sql.SQL(
    "SELECT id, stage, task_name, offer_id, kwargs, error_type, error_message, attempts, first_failed_at,"
    " last_failed_at, replay_count, status, resolution FROM dead_letters"
    " WHERE (%(stage)s::text IS NULL OR stage = %(stage)s) AND (%(status)s::text IS NULL OR status = %(status)s)"
)

#: The one way an entry is discarded: pending entries only, by id or all of one offer's.
DISCARD = sql.SQL(
    "UPDATE dead_letters SET status = 'discarded', resolved_at = clock_timestamp(), resolution = %(resolution)s"
    " WHERE status = 'pending' AND {} RETURNING id, offer_id"
)


def record_failure(
    conn: Connection,
    *,
    stage: str,
    task_name: str,
    offer_id: str | None,
    kwargs: dict[str, Any],
    error_type: str,
    error_message: str,
    traceback_text: str,
    attempts: int,
) -> int:
    """Record a stage run that failed for good; returns the entry's id.

    A replayed entry of the offer that fails again comes back (its replay count kept), not a second entry.
    """
    values = (error_type, error_message, traceback_text, attempts)
    row = None
    if offer_id:
        row = conn.execute(
            """
            UPDATE dead_letters SET status = 'pending', resolved_at = NULL, resolution = NULL,
                error_type = %s, error_message = %s, traceback = %s, attempts = attempts + %s,
                last_failed_at = clock_timestamp()
            WHERE id = (SELECT id FROM dead_letters WHERE stage = %s AND offer_id = %s
                        AND status IN ('pending', 'replayed') ORDER BY id DESC LIMIT 1)
            RETURNING id
            """,
            (*values, stage, offer_id),
        ).fetchone()
    if row is None:
        row = one_row(
            conn.execute(
                "INSERT INTO dead_letters (stage, task_name, offer_id, kwargs, error_type, error_message, traceback, attempts)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (stage, task_name, offer_id, Jsonb(kwargs), *values),
            )
        )
    return int(row["id"])


def entries(conn: Connection, *, stage: str | None = None, status: str | None = "pending") -> list[dict[str, Any]]:
    """Entries of ``stage`` (None: every stage) in ``status`` (None: any), oldest first."""
    return conn.execute(sql.SQL("{} ORDER BY id").format(ENTRIES), {"stage": stage, "status": status}).fetchall()


def entry(conn: Connection, entry_id: int) -> dict[str, Any] | None:
    """One entry with every column (kwargs, traceback), None if there is none."""
    return conn.execute("SELECT * FROM dead_letters WHERE id = %s", (entry_id,)).fetchone()


@dataclass(frozen=True)
class Found:
    """An entry looked up before locking: whether it exists, and its offer."""

    offer_id: str | None


def peek(conn: Connection, entry_id: int) -> Found | None:
    """The entry's offer, without a lock (to lock the offer first); None if there is no entry."""
    row = conn.execute("SELECT offer_id FROM dead_letters WHERE id = %s", (entry_id,)).fetchone()
    return Found(row["offer_id"]) if row else None


def lock_pending(conn: Connection, entry_id: int) -> dict[str, Any] | None:
    """The entry, locked, if it is pending and no one else holds it; else None."""
    return conn.execute(
        "SELECT * FROM dead_letters WHERE id = %s AND status = 'pending' FOR UPDATE SKIP LOCKED", (entry_id,)
    ).fetchone()


def mark_replayed(conn: Connection, entry_id: int) -> None:
    conn.execute(
        "UPDATE dead_letters SET status = 'replayed', replay_count = replay_count + 1, resolved_at = clock_timestamp(),"
        " resolution = 'replayed' WHERE id = %s",
        (entry_id,),
    )


@dataclass(frozen=True)
class Discarded:
    entry_id: int
    offer_id: str | None


def discard(conn: Connection, entry_id: int, *, resolution: str) -> Discarded | None:
    """Close one pending entry without replaying it; None when it is not pending."""
    row = conn.execute(DISCARD.format(sql.SQL("id = %(id)s")), {"resolution": resolution, "id": entry_id}).fetchone()
    return Discarded(row["id"], row["offer_id"]) if row else None


def discard_for_offer(conn: Connection, offer_id: str, *, resolution: str) -> list[Discarded]:
    """Close every pending entry of the offer (it has nothing left to replay)."""
    rows = conn.execute(
        DISCARD.format(sql.SQL("offer_id = %(offer_id)s")), {"resolution": resolution, "offer_id": offer_id}
    ).fetchall()
    return [Discarded(r["id"], r["offer_id"]) for r in rows]


@dataclass(frozen=True)
class Failure:
    """Why an offer's latest pending entry failed."""

    stage: str
    error_type: str
    error_message: str


def latest_pending(conn: Connection, offer_id: str) -> Failure | None:
    row = conn.execute(
        "SELECT stage, error_type, error_message FROM dead_letters WHERE offer_id = %s AND status = 'pending'"
        " ORDER BY id DESC LIMIT 1",
        (offer_id,),
    ).fetchone()
    return Failure(row["stage"], row["error_type"], row["error_message"]) if row else None
