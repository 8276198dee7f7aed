"""Dead-letter entries, one queue per stage: failures recorded, replayed or discarded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg import sql
from psycopg.types.json import Jsonb

from offers_workers.store.db import Connection, one_row, typed

#: The columns `entries` and `dlq list` read: every one but the traceback and ``resolved_at``.
LISTED = (
    "id",
    "stage",
    "task_name",
    "offer_id",
    "kwargs",
    "error_type",
    "error_message",
    "attempts",
    "first_failed_at",
    "last_failed_at",
    "replay_count",
    "status",
    "resolution",
)
#: Entries of a stage (or every stage) in a status (or any), unordered: `entries` and `dlq list` read them.
ENTRIES = sql.SQL(
    "SELECT {} FROM dead_letters"
    " WHERE (%(stage)s::text IS NULL OR stage = %(stage)s) AND (%(status)s::text IS NULL OR status = %(status)s)"
).format(sql.SQL(", ").join(map(sql.Identifier, LISTED)))

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


#: Where an entry stands (``dead_letters.status``).
Status = Literal["pending", "replayed", "discarded"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One dead letter: the run that failed for good (its task and kwargs, sealed), why, and what
    became of it; its fields in the table's order. ``entries`` leaves out the traceback and
    ``resolved_at`` (None there)."""

    id: int
    stage: str
    task_name: str
    offer_id: str | None
    kwargs: dict[str, Any]
    error_type: str
    error_message: str
    traceback: str | None = None
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    replay_count: int
    status: Status
    resolved_at: datetime | None = None
    resolution: str | None

    def listed(self) -> dict[str, Any]:
        """The entry as `dlq list --json` prints it: the ``LISTED`` columns."""
        return {column: getattr(self, column) for column in LISTED}


def entries(conn: Connection, *, stage: str | None = None, status: Status | None = "pending") -> list[Entry]:
    """Entries of ``stage`` (None: every stage) in ``status`` (None: any), oldest first."""
    query = sql.SQL("{} ORDER BY id").format(ENTRIES)
    return typed(conn, Entry).execute(query, {"stage": stage, "status": status}).fetchall()


def entry(conn: Connection, entry_id: int) -> Entry | None:
    """One entry with every column (kwargs, traceback), None if there is none."""
    return typed(conn, Entry).execute("SELECT * FROM dead_letters WHERE id = %s", (entry_id,)).fetchone()


@dataclass(frozen=True)
class Found:
    """An entry looked up before locking: whether it exists, and its offer."""

    offer_id: str | None


def peek(conn: Connection, entry_id: int) -> Found | None:
    """The entry's offer, without a lock (to lock the offer first); None if there is no entry."""
    row = conn.execute("SELECT offer_id FROM dead_letters WHERE id = %s", (entry_id,)).fetchone()
    return Found(row["offer_id"]) if row else None


def lock_pending(conn: Connection, entry_id: int) -> Entry | None:
    """The entry, locked, if it is pending and no one else holds it; else None."""
    return (
        typed(conn, Entry)
        .execute("SELECT * FROM dead_letters WHERE id = %s AND status = 'pending' FOR UPDATE SKIP LOCKED", (entry_id,))
        .fetchone()
    )


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
