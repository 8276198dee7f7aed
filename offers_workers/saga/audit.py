"""The audit trail compliance relies on: verify its hash chain, export it nightly to S3 Glacier, and
restore an export to check it end to end (the runbook's quarterly restore validation).

The chain is written by the database (migration 0004): each row's ``row_hash`` is the SHA-256 of its
content and the previous row's hash. ``digest`` here computes the same from exported rows, so an
archive can be checked without the database that wrote it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import psycopg
from psycopg import sql

from offers_workers.runtime import Runtime

log = logging.getLogger(__name__)

GENESIS = "0" * 64
SEP = chr(31)
NULL = "\\N"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Session advisory lock: one export at a time across the fleet ("auditexp" in ASCII).
EXPORT_LOCK = 0x6175646974657870
ROW_COLUMNS = "id, at, offer_id, kind, from_state, to_state, reason, actor, data::text AS data, prev_hash, row_hash"
#: Rows fetched per round trip while streaming.
BATCH = 2000


def digest(row: dict[str, Any], prev_hash: str) -> str:
    """SHA-256 of one row's content chained to ``prev_hash``, as the database computes it."""
    at = row["at"] if isinstance(row["at"], datetime) else datetime.fromisoformat(row["at"])
    micros = (at - EPOCH) // timedelta(microseconds=1)
    fields = [
        str(row["id"]),
        str(micros),
        row["offer_id"] if row["offer_id"] is not None else NULL,
        row["kind"],
        row["from_state"] if row["from_state"] is not None else NULL,
        row["to_state"] if row["to_state"] is not None else NULL,
        row["reason"] if row["reason"] is not None else NULL,
        row["actor"],
        row["data"],
        prev_hash,
    ]
    return hashlib.sha256(SEP.join(fields).encode("utf-8")).hexdigest()


@dataclass
class ChainCheck:
    rows: int = 0
    first_break: str | None = None
    last_hash: str | None = None
    first_prev_hash: str | None = None

    @property
    def ok(self) -> bool:
        return self.first_break is None


def check_chain(rows: Iterable[dict[str, Any]], expected_prev: str | None = None) -> ChainCheck:
    """Walk rows in id order; name the first row whose content or link does not hold.

    ``expected_prev``: the hash the first row must link to (None: trust the first row's link).
    """
    result = ChainCheck()
    prev = expected_prev
    for row in rows:
        if result.rows == 0:
            result.first_prev_hash = row["prev_hash"]
        result.rows += 1
        if prev is not None and row["prev_hash"] != prev:
            result.first_break = (
                f"row {row['id']}: its link does not match the row before it (a row deleted, inserted or reordered)"
            )
            return result
        if digest(row, row["prev_hash"]) != row["row_hash"]:
            result.first_break = f"row {row['id']}: its content does not match its hash (the row was changed)"
            return result
        prev = result.last_hash = row["row_hash"]
    return result


#: Row filters the trail is read by (fixed SQL; the values go in as parameters).
SINCE = sql.SQL("at >= %s")
ID_RANGE = sql.SQL("id BETWEEN %s AND %s")


EVERY_ROW = sql.SQL("TRUE")


def stream_rows(
    conn: psycopg.Connection, where: sql.Composable = EVERY_ROW, params: tuple[Any, ...] = ()
) -> Iterator[dict[str, Any]]:
    """Audit rows in id order through a server-side cursor: memory stays flat however many rows."""
    query = sql.SQL("SELECT {} FROM audit_events WHERE {} ORDER BY id").format(sql.SQL(ROW_COLUMNS), where)
    with conn.cursor(name="audit_rows") as cur:
        cur.itersize = BATCH
        cur.execute(query, params)
        yield from cur


def verify_chain(rt: Runtime, since: datetime | None = None) -> ChainCheck:
    with rt.db.transaction() as conn:
        if since is None:
            return check_chain(stream_rows(conn), expected_prev=GENESIS)
        return check_chain(stream_rows(conn, SINCE, (since,)))


# --- export -----------------------------------------------------------------------------------------


class ExportBusy(Exception):
    """Another export holds the lock."""


def default_until(now: datetime | None = None) -> datetime:
    """The nightly cut-off: the start of the current UTC day."""
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def object_key(until: datetime, first_id: int, last_id: int) -> str:
    return f"audit/{until:%Y/%m/%d}/audit-{until:%Y%m%dT%H%M%SZ}-{first_id:012d}-{last_id:012d}.jsonl.gz"


def run_export(
    rt: Runtime, until: datetime | None = None, *, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any] | None:
    """Export every audit row not yet exported with ``at`` before ``until``; returns the export row.

    Idempotent per window: rows are taken by id after the last finished export, the key follows
    from the window, and a window already exported is found, not written again. None: nothing new.
    """
    until = until or default_until()
    with psycopg.connect(rt.settings.database_url, autocommit=True) as lock_conn:
        if not lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (EXPORT_LOCK,)).fetchone()[0]:
            raise ExportBusy("another audit export is running")
        try:
            return _export_locked(rt, until, progress)
        finally:
            lock_conn.execute("SELECT pg_advisory_unlock(%s)", (EXPORT_LOCK,))


def _export_locked(rt: Runtime, until: datetime, progress: Callable[[int, int], None] | None) -> dict[str, Any] | None:
    with rt.db.transaction() as conn:
        after = conn.execute(
            "SELECT coalesce(max(last_row_id), 0) AS id FROM audit_exports WHERE status = 'done'"
        ).fetchone()["id"]
        window = conn.execute(
            "SELECT min(id) AS first, max(id) AS last, count(*) AS n FROM audit_events WHERE id > %s AND at < %s",
            (after, until),
        ).fetchone()
        if not window["n"]:
            return None
        key = object_key(until, window["first"], window["last"])
        job = conn.execute(
            """
            INSERT INTO audit_exports (until, first_row_id, last_row_id, object_key, manifest_key, storage_class, status)
            VALUES (%s, %s, %s, %s, %s, %s, 'running')
            ON CONFLICT (object_key) DO UPDATE SET status = CASE WHEN audit_exports.status = 'done' THEN 'done' ELSE 'running' END,
                attempts = audit_exports.attempts + CASE WHEN audit_exports.status = 'done' THEN 0 ELSE 1 END,
                error = NULL
            RETURNING *
            """,
            (
                until,
                window["first"],
                window["last"],
                key,
                key.removesuffix(".jsonl.gz") + ".manifest.json",
                rt.settings.audit_storage_class,
            ),
        ).fetchone()
    if job["status"] == "done":
        return job
    try:
        return _write(rt, job, window["n"], progress)
    except Exception as exc:
        with rt.db.transaction() as conn:
            failed = conn.execute(
                "UPDATE audit_exports SET status = 'failed', error = %s, finished_at = clock_timestamp() WHERE id = %s RETURNING *",
                (f"{type(exc).__name__}: {str(exc)[:500]}", job["id"]),
            ).fetchone()
        # The alert: names the job so on-call can find it (`offers-workers audit exports`).
        log.error(
            "audit export failed",
            extra={"export_id": job["id"], "object_key": job["object_key"], "error": str(exc)[:300]},
        )
        raise ExportFailed(failed) from exc


class ExportFailed(Exception):
    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(f"audit export {job['id']} failed: {job['error']}")
        self.job = job


def _write(
    rt: Runtime, job: dict[str, Any], expected: int, progress: Callable[[int, int], None] | None
) -> dict[str, Any]:
    archive = rt.archive
    with tempfile.TemporaryFile() as spool:
        hasher = _HashingWriter(spool)
        with rt.db.transaction() as conn, gzip.GzipFile(fileobj=hasher, mode="wb", mtime=0) as gz:
            rows = stream_rows(conn, ID_RANGE, (job["first_row_id"], job["last_row_id"]))
            check = check_chain(_written(rows, gz, expected, progress))
        if not check.ok:
            raise ValueError(f"the audit chain is broken, refusing to archive it: {check.first_break}")
        spool.seek(0)
        sha256 = hasher.sha256.hexdigest()
        manifest = {
            "export_id": job["id"],
            "object_key": job["object_key"],
            "row_count": check.rows,
            "sha256": sha256,
            "first_row_id": job["first_row_id"],
            "last_row_id": job["last_row_id"],
            "first_prev_hash": check.first_prev_hash,
            "last_hash": check.last_hash,
            "until": job["until"].isoformat(),
            "storage_class": job["storage_class"],
        }
        archive.put_export(job["object_key"], spool, sha256, {"export-id": str(job["id"]), "rows": str(check.rows)})
    archive.put_manifest(job["manifest_key"], json.dumps(manifest, indent=2).encode())
    with rt.db.transaction() as conn:
        done = conn.execute(
            "UPDATE audit_exports SET status = 'done', row_count = %s, sha256 = %s, finished_at = clock_timestamp(), error = NULL"
            " WHERE id = %s RETURNING *",
            (check.rows, sha256, job["id"]),
        ).fetchone()
    log.info("audit export done", extra={"export_id": job["id"], "rows": check.rows, "object_key": job["object_key"]})
    return done


def _written(
    rows: Iterable[dict[str, Any]], gz: IO[bytes], expected: int, progress: Callable[[int, int], None] | None
) -> Iterator[dict[str, Any]]:
    for n, row in enumerate(rows, 1):
        record = {**row, "at": row["at"].isoformat()}
        gz.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        if progress and (n % 1000 == 0 or n == expected):
            progress(n, expected)
        yield row


class _HashingWriter:
    """A write-only file that hashes what passes through it."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


# --- restore and verify ------------------------------------------------------------------------------


def verify_export(rt: Runtime, export_id: int) -> list[str]:
    """Restore an export, download it, and check it against its manifest and Postgres.

    Returns the discrepancies found, first one first (empty: the archive is whole).
    """
    with rt.db.transaction() as conn:
        job = conn.execute("SELECT * FROM audit_exports WHERE id = %s", (export_id,)).fetchone()
    if job is None:
        return [f"no export {export_id}"]
    if job["status"] != "done":
        return [f"export {export_id} is {job['status']}, not done"]
    archive = rt.archive
    manifest = json.loads(archive.read(job["manifest_key"]))
    archive.restore(job["object_key"])
    problems: list[str] = []
    with tempfile.TemporaryFile() as spool:
        archive.download(job["object_key"], spool)
        spool.seek(0)
        sha256 = hashlib.sha256()
        for block in iter(lambda: spool.read(1 << 20), b""):
            sha256.update(block)
        if sha256.hexdigest() != manifest["sha256"]:
            problems.append(f"object checksum {sha256.hexdigest()} differs from the manifest's {manifest['sha256']}")
        if manifest["sha256"] != job["sha256"]:
            problems.append("the manifest's checksum differs from the export record's")
        spool.seek(0)
        with gzip.GzipFile(fileobj=spool, mode="rb") as gz:
            check = check_chain((json.loads(line) for line in gz), expected_prev=manifest["first_prev_hash"])
    if not check.ok:
        problems.append(f"archived chain: {check.first_break}")
    if check.rows != manifest["row_count"]:
        problems.append(f"the archive holds {check.rows} rows, its manifest says {manifest['row_count']}")
    if check.last_hash != manifest["last_hash"]:
        problems.append("the archive's last hash differs from the manifest's")
    with rt.db.transaction() as conn:
        db = conn.execute(
            "SELECT count(*) AS n, (SELECT row_hash FROM audit_events WHERE id = %(last)s) AS last_hash,"
            " (SELECT prev_hash FROM audit_events WHERE id = %(first)s) AS first_prev"
            " FROM audit_events WHERE id BETWEEN %(first)s AND %(last)s",
            {"first": job["first_row_id"], "last": job["last_row_id"]},
        ).fetchone()
    if db["n"] != check.rows:
        problems.append(f"Postgres holds {db['n']} rows in the window, the archive {check.rows}")
    if db["last_hash"] != check.last_hash or db["first_prev"] != manifest["first_prev_hash"]:
        problems.append("the archive's chain does not end where Postgres's does")
    return problems
