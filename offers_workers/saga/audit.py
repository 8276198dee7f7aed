"""The audit trail compliance relies on: seal rows into its hash chain, verify the chain, export it
nightly to S3 Glacier, and restore an export to check it end to end (the runbook's quarterly restore
validation).

Each row's ``row_hash`` is the SHA-256 of its content and the previous row's hash, computed by the
database (migrations 0004 and 0010). A stage writes its row unlinked; ``seal`` links rows into the
chain, in id order, once their writers have committed, so no stage waits on a fleet-wide lock.
``digest`` here computes the same hash from exported rows, so an archive can be checked without the
database that wrote it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from offers_workers.runtime import Runtime
from offers_workers.store import audit_exports, audit_trail

log = logging.getLogger(__name__)

GENESIS = "0" * 64
SEP = chr(31)
NULL = "\\N"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
    #: Rows written but not sealed into the chain yet (not walked).
    unsealed: int = 0

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


def verify_chain(rt: Runtime, since: datetime | None = None) -> ChainCheck:
    """Seal what is written, then walk the whole sealed trail from the genesis hash, or its rows from
    ``since`` on (trusting the first link). Rows still unsealed are counted in ``unsealed``."""
    sealed = seal(rt, timeout_s=SEAL_WAIT_S)
    with rt.db.transaction() as conn:
        if since is None:
            check = check_chain(audit_trail.every_row(conn), expected_prev=GENESIS)
        else:
            check = check_chain(audit_trail.rows_since(conn, since))
    check.unsealed = sealed.lag.unsealed_rows
    return check


# --- sealing ----------------------------------------------------------------------------------------

#: How long a command (verify-chain, export) waits for rows written before it to be sealed.
SEAL_WAIT_S = 30.0


@dataclass(frozen=True)
class Sealed:
    """What ``seal`` did: rows linked, and how far sealing is behind now."""

    linked: int
    caught_up: bool
    lag: audit_trail.SealLag


def seal_step(rt: Runtime) -> int:
    """One sealing step, never waiting: links the window whose writers have finished and takes the
    next. What the beat's job runs every interval, so a row is sealed within about two intervals."""
    with rt.db.transaction() as conn:
        step = audit_trail.seal_step(conn)
    return step.linked if step is not None else 0


def seal(rt: Runtime, timeout_s: float = SEAL_WAIT_S) -> Sealed:
    """Link every row written before this call into the chain, waiting for their writers to commit
    or roll back; gives up after ``timeout_s`` (a transaction left open) and says so."""
    deadline = time.monotonic() + timeout_s
    with rt.db.read() as conn:
        target = audit_trail.last_handed_out(conn)
    linked, caught_up = 0, False
    while True:
        with rt.db.transaction() as conn:
            step = audit_trail.seal_step(conn)
        if step is not None:
            linked += step.linked
            caught_up = step.sealed_through >= target
        if caught_up or time.monotonic() >= deadline:
            break
        # Writers finish in milliseconds; another sealer (SKIP LOCKED) finishes its step as soon.
        time.sleep(0.01)
    with rt.db.read() as conn:
        lag = audit_trail.seal_lag(conn)
    if linked:
        log.debug("audit rows sealed", extra={"rows": linked, "sealed_through": lag.sealed_through})
    return Sealed(linked, caught_up, lag)


# --- export -----------------------------------------------------------------------------------------


class ExportBusy(Exception):
    """Another export holds the lock."""


def default_until(now: datetime | None = None) -> datetime:
    """The nightly cut-off: the start of the current UTC day."""
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def object_key(until: datetime, first_id: int, last_id: int) -> str:
    return f"audit/{until:%Y/%m/%d}/audit-{until:%Y%m%dT%H%M%SZ}-{first_id:012d}-{last_id:012d}.jsonl.gz"


@dataclass(frozen=True)
class ExportSummary:
    """What one export run did: the figures of the summary on-call reads (``ops.export_summary``).

    Parameters:
        export_id: its row in ``audit_exports``.
        status: ``done`` or ``failed``.
        window_from: when the earliest of its rows was written.
        window_until: the cut-off: it holds the rows not yet exported that were written before this.
        first_row_id, last_row_id: the ids of its first and last audit row.
        rows: the rows archived; on failure, the rows the window holds.
        size_bytes: the gzip object's size; None when no object was written this run.
        sha256: the object's SHA-256; None when no object was written.
        storage_class, object_key, attempts: as its row records them.
        duration_s: how long this run took, from taking the export lock to the end.
        error: why it failed; None when done.
    """

    export_id: int
    status: str
    window_from: datetime | None
    window_until: datetime
    first_row_id: int
    last_row_id: int
    rows: int
    size_bytes: int | None
    sha256: str | None
    storage_class: str
    object_key: str
    attempts: int
    duration_s: float
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "done"


def run_export(
    rt: Runtime, until: datetime | None = None, *, progress: Callable[[int, int], None] | None = None
) -> ExportSummary | None:
    """Export every audit row not yet exported with ``at`` before ``until``; returns what it did.

    Idempotent per window: rows are taken by id after the last finished export, the key follows
    from the window, and a window already exported is found, not written again. None: nothing new.
    Raises ExportFailed (carrying the summary) when the archive could not be written.
    """
    until = until or default_until()
    started = time.monotonic()
    # Only sealed rows are exported: seal first what was written before the cut-off.
    sealed = seal(rt)
    if not sealed.caught_up:
        log.warning(
            "audit export: rows not sealed yet wait for the next export", extra={"rows": sealed.lag.unsealed_rows}
        )
    with audit_trail.export_lock(rt.settings.database_url) as locked:
        if not locked:
            raise ExportBusy("another audit export is running")
        return _export_locked(rt, until, started, progress)


def _export_locked(
    rt: Runtime, until: datetime, started: float, progress: Callable[[int, int], None] | None
) -> ExportSummary | None:
    with rt.db.transaction() as conn:
        window = audit_trail.rows_to_export(conn, audit_exports.last_exported_row(conn), until)
        if not window.rows or window.first is None or window.last is None:
            return None
        key = object_key(until, window.first, window.last)
        job = audit_exports.start(
            conn,
            until=until,
            first_row_id=window.first,
            last_row_id=window.last,
            object_key=key,
            manifest_key=key.removesuffix(".jsonl.gz") + ".manifest.json",
            storage_class=rt.settings.audit_storage_class,
        )
    if job["status"] == "done":
        return _summary(job, window, started, size_bytes=None)
    try:
        done, size_bytes = _write(rt, job, window.rows, progress)
    except Exception as exc:
        with rt.db.transaction() as conn:
            failed = audit_exports.mark_failed(conn, job["id"], f"{type(exc).__name__}: {str(exc)[:500]}")
        # The alert: names the job so on-call can find it (`offers-workers audit exports`).
        log.error(
            "audit export failed",
            extra={"export_id": job["id"], "object_key": job["object_key"], "error": str(exc)[:300]},
        )
        raise ExportFailed(_summary(failed, window, started, size_bytes=None)) from exc
    return _summary(done, window, started, size_bytes)


def _summary(
    job: dict[str, Any], window: audit_trail.RowWindow, started: float, size_bytes: int | None
) -> ExportSummary:
    return ExportSummary(
        export_id=job["id"],
        status=job["status"],
        window_from=window.first_at,
        window_until=job["until"],
        first_row_id=job["first_row_id"],
        last_row_id=job["last_row_id"],
        rows=job["row_count"] if job["row_count"] is not None else window.rows,
        size_bytes=size_bytes,
        sha256=job["sha256"],
        storage_class=job["storage_class"],
        object_key=job["object_key"],
        attempts=job["attempts"],
        duration_s=time.monotonic() - started,
        error=job["error"],
    )


class ExportFailed(Exception):
    def __init__(self, summary: ExportSummary) -> None:
        super().__init__(f"audit export {summary.export_id} failed: {summary.error}")
        self.summary = summary


def _write(
    rt: Runtime, job: dict[str, Any], expected: int, progress: Callable[[int, int], None] | None
) -> tuple[dict[str, Any], int]:
    """Write the window's object and manifest; returns the export row, marked done, and the object's size."""
    archive = rt.archive
    with tempfile.TemporaryFile() as spool:
        hasher = _HashingWriter(spool)
        with rt.db.transaction() as conn, gzip.GzipFile(fileobj=hasher, mode="wb", mtime=0) as gz:
            rows = audit_trail.rows_between(conn, job["first_row_id"], job["last_row_id"])
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
        done = audit_exports.mark_done(conn, job["id"], row_count=check.rows, sha256=sha256)
    log.info("audit export done", extra={"export_id": job["id"], "rows": check.rows, "object_key": job["object_key"]})
    return done, hasher.size


def _written(
    rows: Iterable[dict[str, Any]], gz: gzip.GzipFile, expected: int, progress: Callable[[int, int], None] | None
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
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


# --- restore and verify ------------------------------------------------------------------------------


def verify_export(rt: Runtime, export_id: int) -> list[str]:
    """Restore an export, download it, and check it against its manifest and Postgres.

    Returns the discrepancies found, first one first (empty: the archive is whole).
    """
    with rt.db.transaction() as conn:
        job = audit_exports.load(conn, export_id)
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
        held = audit_trail.chain_ends(conn, job["first_row_id"], job["last_row_id"])
    if held.rows != check.rows:
        problems.append(f"Postgres holds {held.rows} rows in the window, the archive {check.rows}")
    if held.last_hash != check.last_hash or held.first_prev_hash != manifest["first_prev_hash"]:
        problems.append("the archive's chain does not end where Postgres's does")
    return problems
