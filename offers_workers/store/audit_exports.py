"""Audit export jobs: one row per window of the trail archived to S3 (``audit exports`` lists them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from offers_workers.store.db import Connection, one_row


def last_exported_row(conn: Connection) -> int:
    """The highest audit row id a finished export holds (0: none yet)."""
    return one_row(conn.execute("SELECT coalesce(max(last_row_id), 0) AS id FROM audit_exports WHERE status = 'done'"))[
        "id"
    ]


def start(
    conn: Connection,
    *,
    until: datetime,
    first_row_id: int,
    last_row_id: int,
    object_key: str,
    manifest_key: str,
    storage_class: str,
) -> dict[str, Any]:
    """The job for this window, marked running (one more attempt), or as it is if already done.

    The book is written through the owner's functions (migration 0015), which refuse a window that
    does not start after the last exported row or does not end at a sealed one.
    """
    return one_row(
        conn.execute(
            "SELECT * FROM audit_export_start(%s, %s, %s, %s, %s, %s)",
            (until, first_row_id, last_row_id, object_key, manifest_key, storage_class),
        )
    )


def mark_failed(conn: Connection, export_id: int, error: str) -> dict[str, Any]:
    return one_row(conn.execute("SELECT * FROM audit_export_failed(%s, %s)", (export_id, error)))


def mark_done(conn: Connection, export_id: int, *, row_count: int, sha256: str) -> dict[str, Any]:
    """Done, if ``row_count`` is what the window holds (the database counts it again)."""
    return one_row(conn.execute("SELECT * FROM audit_export_done(%s, %s, %s)", (export_id, row_count, sha256)))


def done(conn: Connection) -> list[dict[str, Any]]:
    """Every finished export, in row order (what `audit verify` checks against S3)."""
    return conn.execute("SELECT * FROM audit_exports WHERE status = 'done' ORDER BY first_row_id").fetchall()


def load(conn: Connection, export_id: int) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM audit_exports WHERE id = %s", (export_id,)).fetchone()
