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
    """The job for this window, marked running (one more attempt), or as it is if already done."""
    return one_row(
        conn.execute(
            """
        INSERT INTO audit_exports (until, first_row_id, last_row_id, object_key, manifest_key, storage_class, status)
        VALUES (%s, %s, %s, %s, %s, %s, 'running')
        ON CONFLICT (object_key) DO UPDATE SET status = CASE WHEN audit_exports.status = 'done' THEN 'done' ELSE 'running' END,
            attempts = audit_exports.attempts + CASE WHEN audit_exports.status = 'done' THEN 0 ELSE 1 END,
            error = NULL
        RETURNING *
        """,
            (until, first_row_id, last_row_id, object_key, manifest_key, storage_class),
        )
    )


def mark_failed(conn: Connection, export_id: int, error: str) -> dict[str, Any]:
    return one_row(
        conn.execute(
            "UPDATE audit_exports SET status = 'failed', error = %s, finished_at = clock_timestamp() WHERE id = %s RETURNING *",
            (error, export_id),
        )
    )


def mark_done(conn: Connection, export_id: int, *, row_count: int, sha256: str) -> dict[str, Any]:
    return one_row(
        conn.execute(
            "UPDATE audit_exports SET status = 'done', row_count = %s, sha256 = %s, finished_at = clock_timestamp(), error = NULL"
            " WHERE id = %s RETURNING *",
            (row_count, sha256, export_id),
        )
    )


def load(conn: Connection, export_id: int) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM audit_exports WHERE id = %s", (export_id,)).fetchone()
