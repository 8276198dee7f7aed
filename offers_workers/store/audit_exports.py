"""Audit export jobs: one row per window of the trail archived to S3 (``audit exports`` lists them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from offers_workers.store.db import Connection, one_row, typed

#: Where an export job stands (``audit_exports.status``).
JobStatus = Literal["running", "done", "failed"]


@dataclass(frozen=True, slots=True)
class ExportJob:
    """One export job: the window of trail rows it archives, where it puts them, and how it went."""

    id: int
    #: The cut-off: the window holds the rows not yet exported that were written before this.
    until: datetime
    first_row_id: int
    last_row_id: int
    #: The rows archived (None until done).
    row_count: int | None
    object_key: str
    manifest_key: str
    #: The object's SHA-256 (None until done).
    sha256: str | None
    storage_class: str
    status: JobStatus
    error: str | None
    attempts: int
    started_at: datetime
    finished_at: datetime | None


def last_exported_row(conn: Connection) -> int:
    """The highest audit row id a finished export holds (0: none yet)."""
    row = one_row(conn.execute("SELECT coalesce(max(last_row_id), 0) AS id FROM audit_exports WHERE status = 'done'"))
    return int(row["id"])


def _one(conn: Connection, query: str, params: tuple[object, ...]) -> ExportJob:
    job = typed(conn, ExportJob).execute(query, params).fetchone()
    if job is None:
        raise LookupError("the statement returned no export job")
    return job


def start(
    conn: Connection,
    *,
    until: datetime,
    first_row_id: int,
    last_row_id: int,
    object_key: str,
    manifest_key: str,
    storage_class: str,
) -> ExportJob:
    """The job for this window, marked running (one more attempt), or as it is if already done.

    The book is written through the owner's functions (migration 0015), which refuse a window that
    does not start after the last exported row or does not end at a sealed one.
    """
    return _one(
        conn,
        "SELECT * FROM audit_export_start(%s, %s, %s, %s, %s, %s)",
        (until, first_row_id, last_row_id, object_key, manifest_key, storage_class),
    )


def mark_failed(conn: Connection, export_id: int, error: str) -> ExportJob:
    return _one(conn, "SELECT * FROM audit_export_failed(%s, %s)", (export_id, error))


def mark_done(conn: Connection, export_id: int, *, row_count: int, sha256: str) -> ExportJob:
    """Done, if ``row_count`` is what the window holds (the database counts it again)."""
    return _one(conn, "SELECT * FROM audit_export_done(%s, %s, %s)", (export_id, row_count, sha256))


def done(conn: Connection) -> list[ExportJob]:
    """Every finished export, in row order (what `audit verify` checks against S3)."""
    return (
        typed(conn, ExportJob)
        .execute("SELECT * FROM audit_exports WHERE status = 'done' ORDER BY first_row_id")
        .fetchall()
    )


def load(conn: Connection, export_id: int) -> ExportJob | None:
    return typed(conn, ExportJob).execute("SELECT * FROM audit_exports WHERE id = %s", (export_id,)).fetchone()
