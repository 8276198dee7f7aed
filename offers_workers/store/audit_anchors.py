"""The anchor book and the verification record: which stretch of the audit chain was written to S3
last, and what each `audit verify` found.

Anchors are cut by the owner's ``audit_anchor_next`` from the sealer's own state (migration 0015);
the fleet's role writes the object and reports it written, nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from offers_workers.store.db import Connection, one_row, typed


@dataclass(frozen=True)
class Cut:
    """A stretch of sealed rows to anchor, as the database cut it."""

    id: int
    first_id: int
    last_id: int
    rows: int
    prev_hash: str
    last_hash: str
    #: Rows of the cut are dated at or after this (None: no bound, rows from before anchors).
    dated_from: datetime | None
    #: ... and at or before this.
    sealed_at: datetime
    object_key: str
    cut_at: datetime


def next_cut(conn: Connection, max_rows: int) -> Cut | None:
    """The anchor to write next (one cut and not written yet first); None: nothing new is sealed."""
    row = conn.execute("SELECT * FROM audit_anchor_next(%s)", (max_rows,)).fetchone()
    if row is None:
        return None
    return Cut(
        id=row["id"],
        first_id=row["first_id"],
        last_id=row["last_id"],
        rows=row["rows"],
        prev_hash=row["prev_hash"],
        last_hash=row["last_hash"],
        dated_from=row["dated_from"],
        sealed_at=row["sealed_at"],
        object_key=row["object_key"],
        cut_at=row["cut_at"],
    )


def written(conn: Connection, cut_id: int, version_id: str | None) -> None:
    conn.execute("SELECT * FROM audit_anchor_written(%s, %s)", (cut_id, version_id))


def hashes(conn: Connection, first_id: int, last_id: int) -> Iterator[tuple[int, str]]:
    """(id, row_hash) of the sealed rows ``first_id`` to ``last_id``, in id order."""
    with conn.cursor(name="anchor_rows") as cur:
        cur.itersize = 5000
        cur.execute("SELECT id, row_hash FROM audit_events WHERE id BETWEEN %s AND %s ORDER BY id", (first_id, last_id))
        for row in cur:
            yield row["id"], row["row_hash"]


def first_key_after(conn: Connection, row_id: int) -> str | None:
    """The key of the anchor holding row ``row_id + 1`` by the book (where a recent check starts)."""
    row = conn.execute(
        "SELECT object_key FROM audit_anchors WHERE last_id > %s ORDER BY first_id LIMIT 1", (row_id,)
    ).fetchone()
    return row["object_key"] if row else None


@dataclass(frozen=True, slots=True)
class Anchor:
    """An anchor the book says was written: its stretch of rows, and the object version S3 gave it."""

    first_id: int
    last_id: int
    object_key: str
    version_id: str | None


def covering(conn: Connection, first_id: int, last_id: int) -> list[Anchor]:
    """The anchors written that hold rows ``first_id`` to ``last_id``, in row order."""
    return (
        typed(conn, Anchor)
        .execute(
            "SELECT * FROM audit_anchors WHERE written_at IS NOT NULL AND last_id >= %s AND first_id <= %s"
            " ORDER BY first_id",
            (first_id, last_id),
        )
        .fetchall()
    )


def last_written(conn: Connection) -> Anchor | None:
    return (
        typed(conn, Anchor)
        .execute("SELECT * FROM audit_anchors WHERE written_at IS NOT NULL ORDER BY last_id DESC LIMIT 1")
        .fetchone()
    )


def record_verification(
    conn: Connection, *, findings: list[str], rows_checked: int, anchors: int, exports: int
) -> None:
    conn.execute(
        "INSERT INTO audit_verifications (findings, first_finding, rows_checked, anchors, exports)"
        " VALUES (%s, %s, %s, %s, %s)",
        (len(findings), findings[0][:1000] if findings else None, rows_checked, anchors, exports),
    )


@dataclass(frozen=True)
class Verified:
    """What the verification record says: the most findings of a run in the window, and when a run
    last finished (None: never)."""

    findings: int
    last_finished_at: datetime | None


def verified(conn: Connection, window_s: float) -> Verified:
    row = one_row(
        conn.execute(
            "SELECT coalesce(max(findings) FILTER (WHERE finished_at > clock_timestamp() - make_interval(secs => %s)), 0)"
            " AS findings, max(finished_at) AS last FROM audit_verifications",
            (window_s,),
        )
    )
    return Verified(row["findings"], row["last"])
