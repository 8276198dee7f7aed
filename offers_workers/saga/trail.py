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

import base64
import gzip
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO

from psycopg.conninfo import conninfo_to_dict

from offers_workers.domain.errors import PermanentError
from offers_workers.domain.trail_objects import ANCHOR_FORMAT, Anchor, ExportManifest, NotWritten
from offers_workers.partners.interfaces import Archive, ArchivedObject, KeyHistory
from offers_workers.runtime import Runtime
from offers_workers.store import audit_anchors, audit_exports, audit_trail
from offers_workers.store.audit_exports import ExportJob
from offers_workers.store.audit_trail import TrailRow

log = logging.getLogger(__name__)

GENESIS = "0" * 64
SEP = chr(31)
NULL = "\\N"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def digest(row: TrailRow, prev_hash: str) -> str:
    """SHA-256 of one row's content chained to ``prev_hash``, as the database computes it."""
    micros = (row.at - EPOCH) // timedelta(microseconds=1)
    fields = [
        str(row.id),
        str(micros),
        row.offer_id if row.offer_id is not None else NULL,
        row.kind,
        row.from_state if row.from_state is not None else NULL,
        row.to_state if row.to_state is not None else NULL,
        row.reason if row.reason is not None else NULL,
        row.actor,
        row.data,
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


def check_chain(rows: Iterable[TrailRow], expected_prev: str | None = None) -> ChainCheck:
    """Walk rows in id order; name the first row whose content or link does not hold.

    ``expected_prev``: the hash the first row must link to (None: trust the first row's link).
    """
    result = ChainCheck()
    prev = expected_prev
    for row in rows:
        if result.rows == 0:
            result.first_prev_hash = row.prev_hash
        result.rows += 1
        if prev is not None and row.prev_hash != prev:
            result.first_break = (
                f"row {row.id}: its link does not match the row before it (a row deleted, inserted or reordered)"
            )
            return result
        if row.prev_hash is None or digest(row, row.prev_hash) != row.row_hash:
            result.first_break = f"row {row.id}: its content does not match its hash (the row was changed)"
            return result
        prev = result.last_hash = row.row_hash
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


def keyspace(rt: Runtime) -> str:
    """What the archive's keys start with: nothing in a deployment (a bucket per fleet); in the
    sandbox, where one S3 serves the databases of many local fleets and test runs, the database's
    name, so that their chains' anchors and exports never meet."""
    if not rt.settings.sandbox or not rt.settings.database_url:
        return ""
    return f"{conninfo_to_dict(rt.settings.database_url).get('dbname') or 'offers'}/"


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
        key = keyspace(rt) + object_key(until, window.first, window.last)
        job = audit_exports.start(
            conn,
            until=until,
            first_row_id=window.first,
            last_row_id=window.last,
            object_key=key,
            manifest_key=key.removesuffix(".jsonl.gz") + ".manifest.json",
            storage_class=rt.settings.audit_storage_class,
        )
    if job.status == "done":
        return _summary(job, window, started, size_bytes=None)
    try:
        done, size_bytes = _write(rt, job, window.rows, progress)
    except Exception as exc:
        with rt.db.transaction() as conn:
            failed = audit_exports.mark_failed(conn, job.id, f"{type(exc).__name__}: {str(exc)[:500]}")
        # The alert: names the job so on-call can find it (`offers-workers audit exports`).
        log.error(
            "audit export failed",
            extra={"export_id": job.id, "object_key": job.object_key, "error": str(exc)[:300]},
        )
        raise ExportFailed(_summary(failed, window, started, size_bytes=None)) from exc
    return _summary(done, window, started, size_bytes)


def _summary(job: ExportJob, window: audit_trail.RowWindow, started: float, size_bytes: int | None) -> ExportSummary:
    return ExportSummary(
        export_id=job.id,
        status=job.status,
        window_from=window.first_at,
        window_until=job.until,
        first_row_id=job.first_row_id,
        last_row_id=job.last_row_id,
        rows=job.row_count if job.row_count is not None else window.rows,
        size_bytes=size_bytes,
        sha256=job.sha256,
        storage_class=job.storage_class,
        object_key=job.object_key,
        attempts=job.attempts,
        duration_s=time.monotonic() - started,
        error=job.error,
    )


class ExportFailed(Exception):
    def __init__(self, summary: ExportSummary) -> None:
        super().__init__(f"audit export {summary.export_id} failed: {summary.error}")
        self.summary = summary


def _write(
    rt: Runtime, job: ExportJob, expected: int, progress: Callable[[int, int], None] | None
) -> tuple[ExportJob, int]:
    """Write the window's object and manifest; returns the export row, marked done, and the object's size."""
    archive = rt.archive
    anchor(rt)  # the window is checked against its anchors before it is archived
    differences = anchored_differences(rt, job.first_row_id, job.last_row_id)
    if differences:
        raise ValueError(f"the audit trail differs from its anchors, refusing to archive it: {differences[0]}")
    with tempfile.TemporaryFile() as spool:
        hasher = _HashingWriter(spool)
        with rt.db.transaction() as conn, gzip.GzipFile(fileobj=hasher, mode="wb", mtime=0) as gz:
            rows = audit_trail.rows_between(conn, job.first_row_id, job.last_row_id)
            check = check_chain(_written(rows, gz, expected, progress))
        if not check.ok:
            raise ValueError(f"the audit chain is broken, refusing to archive it: {check.first_break}")
        spool.seek(0)
        sha256 = hasher.sha256.hexdigest()
        manifest = ExportManifest(
            export_id=job.id,
            object_key=job.object_key,
            row_count=check.rows,
            sha256=sha256,
            first_row_id=job.first_row_id,
            last_row_id=job.last_row_id,
            first_prev_hash=check.first_prev_hash,
            last_hash=check.last_hash,
            until=job.until,
            storage_class=job.storage_class,
        )
        # Under Object Lock a second write is a second version for good: a retry after a crash
        # finds what the first run wrote and takes it.
        if not _already_archived(archive, job.object_key, sha256):
            archive.put_export(job.object_key, spool, sha256, {"export-id": str(job.id), "rows": str(check.rows)})
    manifest_body = manifest.to_bytes()
    if not _already_archived(archive, job.manifest_key, hashlib.sha256(manifest_body).hexdigest()):
        archive.put_manifest(job.manifest_key, manifest_body)
    with rt.db.transaction() as conn:
        done = audit_exports.mark_done(conn, job.id, row_count=check.rows, sha256=sha256)
    log.info("audit export done", extra={"export_id": job.id, "rows": check.rows, "object_key": job.object_key})
    return done, hasher.size


def _already_archived(archive: Archive, key: str, sha256_hex: str) -> bool:
    """True when ``key`` is in the archive with this content; a different content there is refused."""
    found = _head(archive, key)
    if found is None:
        return False
    if found.checksum_sha256 != _b64(sha256_hex):
        raise ValueError(f"the archive already holds a different {key}: refusing to add a version")
    return True


def _written(
    rows: Iterable[TrailRow], gz: gzip.GzipFile, expected: int, progress: Callable[[int, int], None] | None
) -> Iterator[TrailRow]:
    for n, row in enumerate(rows, 1):
        gz.write(json.dumps(row.as_json(), separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
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
    if job.status != "done":
        return [f"export {export_id} is {job.status}, not done"]
    archive = rt.archive
    versions = archive.versions(job.manifest_key)
    if not versions:
        return [f"its manifest {job.manifest_key} is missing from S3"]
    # The version written first: a later one is a rewrite (`audit verify` names it).
    try:
        manifest = ExportManifest.parse(archive.read(job.manifest_key, versions[-1].version_id))
    except NotWritten as exc:
        return [f"its manifest {job.manifest_key} is not one the fleet wrote ({exc})"]
    archive.restore(job.object_key)
    problems: list[str] = []
    with tempfile.TemporaryFile() as spool:
        archive.download(job.object_key, spool)
        spool.seek(0)
        sha256 = hashlib.sha256()
        for block in iter(lambda: spool.read(1 << 20), b""):
            sha256.update(block)
        checksum = sha256.hexdigest()
        if checksum != manifest.sha256:
            problems.append(f"object checksum {checksum} differs from the manifest's {manifest.sha256}")
        if manifest.sha256 != job.sha256:
            problems.append("the manifest's checksum differs from the export record's")
        if checksum != manifest.sha256:
            # Not what the fleet archived (an overwrite is served as the latest version): not read.
            return problems
        spool.seek(0)
        try:
            with gzip.GzipFile(fileobj=spool, mode="rb") as gz:
                lines = (TrailRow.from_json(json.loads(line)) for line in gz)
                check = check_chain(lines, expected_prev=manifest.first_prev_hash)
        except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            # Its checksum matched a manifest the fleet did not write either: named, not a traceback.
            return [*problems, f"the archive is not an export the fleet wrote ({type(exc).__name__}: {exc})"[:300]]
    if not check.ok:
        problems.append(f"archived chain: {check.first_break}")
    if check.rows != manifest.row_count:
        problems.append(f"the archive holds {check.rows} rows, its manifest says {manifest.row_count}")
    if check.last_hash != manifest.last_hash:
        problems.append("the archive's last hash differs from the manifest's")
    with rt.db.transaction() as conn:
        held = audit_trail.chain_ends(conn, job.first_row_id, job.last_row_id)
    if held.rows != check.rows:
        problems.append(f"Postgres holds {held.rows} rows in the window, the archive {check.rows}")
    if held.last_hash != check.last_hash or held.first_prev_hash != manifest.first_prev_hash:
        problems.append("the archive's chain does not end where Postgres's does")
    return problems


# --- anchors outside Postgres --------------------------------------------------------------------------
#
# An owner of the database can rewrite the trail and re-chain it: the hashes alone prove nothing to
# them. So the chain's sealed head is written to S3 once a minute, under Object Lock in compliance
# mode (no one deletes or overwrites it during its retention), with the hash of every row sealed
# since the last anchor; the nightly export's manifest is one more anchor. `verify` checks Postgres
# against them.

#: Where anchors live in the archive bucket, one object per stretch of rows, named by its first id.
ANCHOR_PREFIX = "audit-anchors/"
#: Rows in one anchor at most: a busy minute, or a backlog (the first anchor of an old trail), is
#: cut in pieces, so that writing or checking one holds a bounded number of hashes in memory.
ANCHOR_MAX_ROWS = 5_000
#: Clock steps a row's date may be off its anchor's bounds by without being called tampered.
CLOCK_TOLERANCE = timedelta(seconds=1)


class AnchorConflict(Exception):
    """The archive holds a different anchor under the key of the one being written."""


def anchor(rt: Runtime) -> int:
    """Write every stretch of rows sealed since the last anchor to S3; returns the rows anchored.

    Safe to run twice or crash midway: the stretch is cut once by the database and kept until it is
    written; an object already in S3 under its key (a crash after the write) is taken, not rewritten.
    """
    total = 0
    while True:
        with rt.db.transaction() as conn:
            cut = audit_anchors.next_cut(conn, ANCHOR_MAX_ROWS)
            if cut is None:
                return total
            body = _anchor_body(cut, audit_anchors.hashes(conn, cut.first_id, cut.last_id))
        version_id = _put_anchor_once(rt, keyspace(rt) + cut.object_key, body)
        with rt.db.transaction() as conn:
            audit_anchors.written(conn, cut.id, version_id)
        total += cut.rows
        if cut.rows < ANCHOR_MAX_ROWS:
            return total


def _anchor_body(cut: audit_anchors.Cut, rows: Iterable[tuple[int, str]]) -> bytes:
    return Anchor(
        format=ANCHOR_FORMAT,
        first_id=cut.first_id,
        last_id=cut.last_id,
        rows=cut.rows,
        prev_hash=cut.prev_hash,
        last_hash=cut.last_hash,
        dated_from=cut.dated_from,
        sealed_at=cut.sealed_at,
        cut_at=cut.cut_at,
        hashes=tuple(rows),
    ).to_bytes()


def _put_anchor_once(rt: Runtime, key: str, body: bytes) -> str | None:
    archive = rt.archive
    held = _head(archive, key)
    if held is not None:
        if held.checksum_sha256 != _b64(hashlib.sha256(body).hexdigest()):
            raise AnchorConflict(f"{key} already holds a different anchor (version {held.version_id})")
        return held.version_id
    return archive.put_anchor(key, body).version_id


def _head(archive: Archive, key: str) -> ArchivedObject | None:
    """What the archive holds under ``key`` now (None: nothing). A HEAD, not a listing of versions:
    S3 answers it at the same cost however full the bucket is."""
    try:
        return archive.head(key)
    except PermanentError as exc:
        if exc.http_status == 404:
            return None
        raise


# --- verification against the anchors ------------------------------------------------------------------


@dataclass
class Verification:
    """What ``verify`` found: each finding names a row, an export or an anchor and what differs."""

    findings: list[str]
    rows_checked: int = 0
    anchors: int = 0
    exports: int = 0
    #: Sealed rows after the last anchor (checked by the chain alone).
    unanchored: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings


def verify(rt: Runtime, *, full: bool = False, record: bool = True) -> Verification:
    """Check Postgres's audit trail against the chain, the export manifests and the anchors in S3.

    Seals and anchors what is written first. Every finished export is checked against its manifest
    and object (both read at their first version); the chain is walked and the anchors are read from
    the last export's end on, or from the first row with ``full``. The outcome is recorded (the alert reads it) when ``record``.
    """
    seal(rt, timeout_s=SEAL_WAIT_S)
    result = Verification(findings=[])
    if not rt.archive.lock_enabled():
        # Nothing can be anchored there (S3 refuses a locked write), and nothing there is kept.
        result.findings.append(f"bucket {rt.archive.bucket}: Object Lock is off: exports and anchors can be deleted")
    else:
        try:
            anchor(rt)
        except AnchorConflict as exc:  # someone wrote under the next anchor's key before the fleet did
            result.findings.append(f"anchor {exc}")
    exported_through = _verify_exports(rt, result)
    after_row = 0 if full else exported_through
    # The chain from the genesis hash, or from the end of the last export S3 bears out (its rows
    # are held to their manifests): an hourly run does not walk years of rows.
    with rt.db.transaction() as conn:
        start = audit_trail.row_hash(conn, after_row) if after_row else GENESIS
        through = audit_trail.seal_lag(conn).sealed_through
        chain = check_chain(audit_trail.rows_between(conn, after_row + 1, through), expected_prev=start)
    if not chain.ok:
        result.findings.append(f"chain: {chain.first_break}")
    result.rows_checked = chain.rows
    _verify_anchors(rt, result, after_row=after_row)
    if record:
        with rt.db.transaction() as conn:
            audit_anchors.record_verification(
                conn,
                findings=result.findings,
                rows_checked=result.rows_checked,
                anchors=result.anchors,
                exports=result.exports,
            )
    if result.findings:
        log.error(
            "audit trail differs from its anchors",
            extra={"findings": len(result.findings), "first": result.findings[0][:300]},
        )
    return result


def _first_version(
    rt: Runtime, history: KeyHistory | None, key: str, what: str, findings: list[str], *, check_lock: bool = True
) -> str | None:
    """The version of ``key`` written first; a missing key, a later version (a rewrite), a delete
    marker in front and, with ``check_lock``, a version not under compliance lock are named."""
    if history is None:
        findings.append(f"{what}: {key} is missing from S3")
        return None
    if len(history.versions) > 1:
        findings.append(
            f"{what}: {key} was overwritten after it was written ({len(history.versions)} versions; the first is checked)"
        )
    if history.hidden:
        findings.append(f"{what}: hidden behind a delete marker (the version written first is checked)")
    if check_lock and rt.archive.lock(key, history.first.version_id).mode != "COMPLIANCE":
        findings.append(f"{what}: {key} is not under Object Lock in compliance mode")
    return history.first.version_id


def _verify_exports(rt: Runtime, result: Verification) -> int:
    """Check each finished export against S3; returns the last row id the exports hold."""
    with rt.db.transaction() as conn:
        jobs = audit_exports.done(conn)
    archive = rt.archive
    # One listing of every version under the exports' prefix: rewrites and delete markers show.
    histories = {h.key: h for h in archive.histories(keyspace(rt) + "audit/")}
    seen: set[str] = set()
    prev_last_hash: str | None = None
    through, borne_out = 0, True
    for job in jobs:
        result.exports += 1
        before = len(result.findings)
        what = f"export {job.id} (rows {job.first_row_id} to {job.last_row_id})"
        seen.add(job.manifest_key)
        version = _first_version(rt, histories.get(job.manifest_key), job.manifest_key, what, result.findings)
        if version is None:
            borne_out = False
            continue
        try:
            manifest = ExportManifest.parse(archive.read(job.manifest_key, version))
        except NotWritten as exc:
            result.findings.append(f"{what}: its manifest {job.manifest_key} is not one the fleet wrote ({exc})")
            borne_out = False
            continue
        for field_name, held, written in (
            ("first_row_id", job.first_row_id, manifest.first_row_id),
            ("last_row_id", job.last_row_id, manifest.last_row_id),
            ("row_count", job.row_count, manifest.row_count),
            ("sha256", job.sha256, manifest.sha256),
        ):
            if written != held:
                result.findings.append(f"{what}: Postgres's {field_name} is {held}, its manifest's {written}")
        object_history = histories.get(job.object_key)
        _first_version(rt, object_history, job.object_key, what, result.findings)
        if object_history is not None and len(object_history.versions) == 1:  # a rewrite is named above
            stored = archive.head(job.object_key)
            if stored.checksum_sha256 and stored.checksum_sha256 != _b64(manifest.sha256):
                result.findings.append(f"{what}: its object's SHA-256 differs from its manifest's")
        with rt.db.transaction() as conn:
            held_ends = audit_trail.chain_ends(conn, job.first_row_id, job.last_row_id)
        if held_ends.rows != manifest.row_count:
            result.findings.append(
                f"{what}: Postgres holds {held_ends.rows} rows in its window, its manifest {manifest.row_count}"
            )
        elif held_ends.last_hash != manifest.last_hash or held_ends.first_prev_hash != manifest.first_prev_hash:
            result.findings.append(f"{what}: Postgres's chain no longer ends where its manifest says")
        if prev_last_hash is not None and manifest.first_prev_hash != prev_last_hash:
            result.findings.append(f"{what}: it does not follow on from the export before it")
        prev_last_hash = manifest.last_hash
        # The anchors take over after the last of the exports S3 bears out, in order: never after
        # one booked in Postgres alone.
        borne_out = borne_out and len(result.findings) == before
        if borne_out:
            through = job.last_row_id
    for key in sorted(histories):
        if key.endswith(".manifest.json") and key not in seen:
            result.findings.append(f"export manifest {key} is in S3, but no finished export in Postgres has it")
    return through


def _b64(sha256_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode()


def _verify_anchors(rt: Runtime, result: Verification, *, after_row: int) -> None:
    """Check the rows after ``after_row`` against every anchor that holds them."""
    archive = rt.archive
    with rt.db.read() as conn:
        booked = audit_anchors.first_key_after(conn, after_row) if after_row else None
        sealed_through = audit_trail.seal_lag(conn).sealed_through
        book = audit_anchors.last_written(conn)
    start = keyspace(rt) + booked if booked else None
    # One listing of every version: a delete marker hides nothing from it, and a rewrite shows.
    histories = [h for h in archive.histories(keyspace(rt) + ANCHOR_PREFIX) if start is None or h.key >= start]
    expected_first: int | None = None if after_row else 1
    expected_prev: str | None = None if after_row else GENESIS
    last_anchored = after_row
    for n, history in enumerate(histories):
        what = f"anchor {history.key}"
        # The newest one's lock stands for the rest: one writer, one put call, for every anchor.
        version = _first_version(rt, history, history.key, what, result.findings, check_lock=n == len(histories) - 1)
        try:
            body = Anchor.parse(archive.read(history.key, version))
        except NotWritten as exc:
            result.findings.append(f"{what}: not an anchor the fleet wrote ({exc})")
            continue
        result.anchors += 1
        if expected_first is not None and body.first_id != expected_first:
            result.findings.append(
                f"{what}: starts at row {body.first_id}, the anchor before it ended at row {expected_first - 1}"
                " (rows between them were never anchored)"
                if body.first_id > expected_first
                else f"{what}: overlaps the anchor before it (starts at row {body.first_id})"
            )
        elif expected_prev is not None and body.prev_hash != expected_prev:
            result.findings.append(f"{what}: its chain does not follow on from the anchor before it")
        _check_anchored_rows(rt, body, what, result.findings)
        expected_first, expected_prev = body.last_id + 1, body.last_hash
        last_anchored = body.last_id
    result.unanchored = max(0, sealed_through - last_anchored)
    # verify anchored everything sealed a moment ago: rows past the last anchor in S3 that the book
    # says are anchored were booked by someone who never wrote them.
    if book is not None and book.last_id > last_anchored:
        result.findings.append(
            f"rows {last_anchored + 1} to {book.last_id}: anchored by the book, but S3 holds no anchor for them"
        )


def anchored_differences(rt: Runtime, first_id: int, last_id: int) -> list[str]:
    """How rows ``first_id`` to ``last_id`` differ from their anchors in S3 (empty: they agree).

    The export asks before it archives a window: the manifest it writes becomes the anchor of those
    rows, so rows rewritten before the export must not get one.
    """
    findings: list[str] = []
    with rt.db.read() as conn:
        booked = audit_anchors.covering(conn, first_id, last_id)
    covered_through = first_id - 1
    for entry in booked:
        # The version the book says was written: a later one is a rewrite (`verify` names those).
        key = keyspace(rt) + entry.object_key
        try:
            body = Anchor.parse(rt.archive.read(key, entry.version_id))
        except PermanentError as exc:
            findings.append(f"anchor {key}: version {entry.version_id} cannot be read from S3 ({exc.code})")
            continue
        except NotWritten as exc:
            findings.append(f"anchor {key}: version {entry.version_id} is not an anchor the fleet wrote ({exc})")
            continue
        _check_anchored_rows(rt, body, f"anchor {key}", findings)
        covered_through = max(covered_through, body.last_id)
    if covered_through < last_id:
        findings.append(f"rows {covered_through + 1} to {last_id}: no anchor holds them")
    return findings


def _check_anchored_rows(rt: Runtime, body: Anchor, what: str, findings: list[str]) -> None:
    anchored = dict(body.hashes)
    dated_from, sealed_at = body.dated_from, body.sealed_at
    with rt.db.transaction() as conn:
        for row in audit_trail.rows_between(conn, body.first_id, body.last_id):
            row_id = row.id
            expected = anchored.pop(row_id, None)
            if expected is None:
                findings.append(f"row {row_id}: not in {what}: inserted after its stretch was sealed")
            elif row.row_hash != expected:
                if row.row_hash and row.prev_hash is not None and digest(row, row.prev_hash) == row.row_hash:
                    findings.append(f"row {row_id}: re-chained: its hash differs from {what}'s")
                else:
                    findings.append(f"row {row_id}: rewritten: its content or hash differs from {what}'s")
            if dated_from is not None and row.at < dated_from - CLOCK_TOLERANCE:
                findings.append(
                    f"row {row_id}: dated {row.at.isoformat()}, before rows already sealed"
                    f" (rows of {what} were written from {dated_from.isoformat()} on)"
                )
            elif row.at > sealed_at + CLOCK_TOLERANCE:
                findings.append(
                    f"row {row_id}: dated {row.at.isoformat()}, after its stretch was sealed ({sealed_at.isoformat()})"
                )
    for row_id in sorted(anchored):
        findings.append(f"row {row_id}: deleted: {what} holds it, Postgres does not")


# --- legal hold -------------------------------------------------------------------------------------------


def legal_hold(rt: Runtime, export_id: int, on: bool) -> list[str]:
    """Put a legal hold on an export's object and manifest (``on``), or lift it; returns the keys."""
    with rt.db.transaction() as conn:
        job = audit_exports.load(conn, export_id)
    if job is None or job.status != "done":
        raise LookupError(f"no finished export {export_id}")
    keys = [job.object_key, job.manifest_key]
    for key in keys:
        # On the version written first: a later one is a rewrite, and not what is held.
        versions = rt.archive.versions(key)
        if not versions:
            raise LookupError(f"export {export_id}: {key} is not in the archive")
        rt.archive.set_legal_hold(key, on, versions[-1].version_id)
    log.warning("audit legal hold " + ("set" if on else "lifted"), extra={"export_id": export_id})
    return keys
