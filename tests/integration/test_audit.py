"""The audit trail: append-only in the database, hash-chained, exported to S3 Glacier (moto server)
and restored to verify.
"""

from __future__ import annotations

import json
import re
import time
import tracemalloc
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import psycopg
import psycopg.sql
import pytest

from config.settings import load_settings
from offers_workers.local.demo import send_samples, settled
from offers_workers.local.samples import make_samples
from offers_workers.local.sandbox import clear_faults, set_fault
from offers_workers.partners.aws_archive import AuditArchive, RestoreInProgress
from offers_workers.runtime import Runtime
from offers_workers.saga import trail
from offers_workers.store import audit_trail
from tests.conftest import RUN_ID, SERVER, cli, wait_until


def test_the_database_refuses_to_change_or_remove_audit_rows(runtime) -> None:
    with runtime.db.transaction() as conn:
        audit_trail.record_audit(conn, None, "test_row", actor="test")
    for statement in (
        "UPDATE audit_events SET actor = 'someone else'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ):
        # The fleet's login has no such privilege; the owner's meets the append-only triggers
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"),
            runtime.db.transaction() as conn,
        ):
            conn.execute(statement)
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"),
            psycopg.connect(SERVER["owner"]) as conn,
        ):
            conn.execute(statement)


def test_verify_chain_names_the_first_changed_or_missing_row(scratch_database: str) -> None:
    env = {"OFFERS_DATABASE_URL": scratch_database}
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        for n in range(10):
            audit_trail.record_audit(
                conn, f"off_{n}", "transition", actor="test", to_state="received", data={"n": n, "note": "ünïcode ✓"}
            )
        ids = [r[0] for r in conn.execute("SELECT id FROM audit_events ORDER BY id")]
    intact = cli("audit", "verify-chain", env=env)
    assert intact.returncode == 0 and "10 rows" in intact.stdout, intact.stderr

    def tamper(statement: str) -> None:
        # Only the table's owner, turning the guard off, can do this: the chain still tells.
        with psycopg.connect(scratch_database, autocommit=True) as conn:
            conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_change")
            conn.execute(statement)
            conn.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_change")

    tamper(f"UPDATE audit_events SET data = '{{\"n\": 99}}' WHERE id = {ids[4]}")
    changed = cli("audit", "verify-chain", env=env)
    assert changed.returncode == 1 and f"row {ids[4]}: its content does not match" in changed.stderr
    tamper(f'UPDATE audit_events SET data = \'{{"n": 4, "note": "ünïcode ✓"}}\' WHERE id = {ids[4]}')
    assert cli("audit", "verify-chain", env=env).returncode == 0

    tamper(f"DELETE FROM audit_events WHERE id = {ids[6]}")
    removed = cli("audit", "verify-chain", env=env)
    assert removed.returncode == 1 and f"row {ids[7]}: its link does not match" in removed.stderr
    # From a later point on, the rest of the chain still holds
    since = cli("audit", "verify-chain", "--since", (datetime.now(UTC) - timedelta(hours=1)).isoformat(), env=env)
    assert since.returncode == 1
    assert cli("audit", "verify-chain", "--since", "yesterday", env=env).returncode == 2


@pytest.mark.usefixtures("offers_env")
def test_verify_chain_since_takes_a_duration_like_every_other_since(scratch_database: str) -> None:
    # Given an intact chain
    env = {"OFFERS_DATABASE_URL": scratch_database}
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        for n in range(3):
            audit_trail.record_audit(conn, f"off_{n}", "transition", actor="test", to_state="received")
    # When the operator checks the last hour, or week, as `offers list --since` would take it
    for since in ("1h", "7d"):
        checked = cli("audit", "verify-chain", "--since", since, env=env)
        # Then the rows of that window are walked
        assert checked.returncode == 0, checked.stderr
        assert "audit chain intact: 3 rows since" in checked.stdout
    assert cli("audit", "verify-chain", "--since", "2h ago", env=env).returncode == 2


@pytest.mark.usefixtures("fleet")
def test_an_export_is_archived_in_glacier_verified_and_never_written_twice(
    celery_app, runtime, settings, sandbox
) -> None:
    # Given a demo-sized run of offers
    samples = make_samples(200, f"audit-{RUN_ID}", seed=21)
    send_samples(lambda offer: celery_app.send_task("offers.submit", kwargs={"offer": offer}), samples)
    wait_until(lambda: settled(runtime, samples)[0] == len(samples), timeout=180, message="the samples to settle")
    until = datetime.now(UTC).isoformat()

    # When the export fails on S3 (every AWS request answers 503, past the SDK's retries)
    set_fault(sandbox, "aws", status=503, rate=1.0)
    try:
        failed = cli("audit", "export", "--until", until)
    finally:
        clear_faults(sandbox, "aws")
    assert failed.returncode == 1 and "failed" in failed.stderr and "the next run retries this window" in failed.stderr
    jobs = json.loads(cli("audit", "exports", "--json").stdout)
    assert jobs[0]["status"] == "failed" and jobs[0]["error"]

    # Then the next run exports the same window under the same key, and it verifies
    done = cli("audit", "export", "--until", until)
    assert done.returncode == 0, done.stderr
    jobs = json.loads(cli("audit", "exports", "--json").stdout)
    job = jobs[0]
    assert (job["status"], job["attempts"], job["object_key"]) == ("done", 2, jobs[0]["object_key"])
    archive = AuditArchive(settings)
    head = archive.head(job["object_key"])
    assert head.storage_class == "GLACIER"
    assert head.checksum_sha256 and head.server_side_encryption == "AES256"
    manifest = json.loads(archive.read(job["manifest_key"]))
    with runtime.db.transaction() as conn:
        in_window = conn.execute(
            "SELECT count(*) AS n FROM audit_events WHERE id BETWEEN %s AND %s",
            (job["first_row_id"], job["last_row_id"]),
        ).fetchone()["n"]
        unexported = conn.execute(
            "SELECT count(*) AS n FROM audit_events WHERE at < %s AND id > %s", (until, job["last_row_id"])
        ).fetchone()["n"]
    assert manifest["row_count"] == job["row_count"] == in_window > len(samples)
    assert manifest["sha256"] == job["sha256"] and unexported == 0
    verified = cli("audit", "verify", str(job["id"]))
    assert verified.returncode == 0, verified.stderr

    # A rerun of the same window writes nothing: no new job, no new object version
    again = cli("audit", "export", "--until", until)
    assert again.returncode == 0 and "nothing to export" in again.stdout
    assert len(json.loads(cli("audit", "exports", "--json").stdout)) == len(jobs)
    assert len(archive.versions(job["object_key"])) == 1

    # Two exports at once: the second finds the first holding the lock
    with psycopg.connect(settings.database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (audit_trail.EXPORT_LOCK,))
        busy = cli("audit", "export")
        assert busy.returncode == 1 and "another audit export is running" in busy.stderr
    assert cli("audit", "verify", "999999").returncode == 1


@contextmanager
def glacier_restores(aws_endpoint: str, transition: dict) -> Iterator[None]:
    """moto's restores progress as ``transition`` says (its state manager) instead of at once."""

    def call(action: str, body: dict) -> None:
        request = urllib.request.Request(
            f"{aws_endpoint}/moto-api/state-manager/{action}", data=json.dumps(body).encode(), method="POST"
        )
        urllib.request.urlopen(request, timeout=10).close()

    call("set-transition", {"model_name": "s3::keyrestore", "transition": transition})
    try:
        yield
    finally:
        call("unset-transition", {"model_name": "s3::keyrestore"})


def test_verify_of_an_export_whose_restore_takes_hours_says_to_come_back_later(scratch_database: str, settings) -> None:
    # Given an export in Glacier
    env = {"OFFERS_DATABASE_URL": scratch_database}
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        for n in range(3):
            audit_trail.record_audit(conn, f"off_{n}", "transition", actor="test", to_state="received")
    until = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    assert cli("audit", "export", "--until", until, env=env).returncode == 0
    job = json.loads(cli("audit", "exports", "--json", env=env).stdout)[0]
    archive = AuditArchive(settings)

    # When its restore is requested and does not finish while we wait (Glacier Standard takes hours)
    with (
        glacier_restores(settings.aws_endpoint_url, {"progression": "manual", "times": 1}),
        pytest.raises(RestoreInProgress),
    ):
        archive.restore(job["object_key"], timeout_s=0)
    # and the operator runs verify while it is still running
    with glacier_restores(settings.aws_endpoint_url, {"progression": "manual", "times": 1_000_000_000}):
        pending = cli("audit", "verify", str(job["id"]), env=env, timeout=60)

    # Then verify says so in one line, and to run it again later, at once and with exit 1
    assert pending.returncode == 1
    [line] = pending.stderr.strip().splitlines()
    assert line.startswith(
        f"offers-workers: export {job['id']}: the restore of s3://{settings.audit_bucket}/{job['object_key']}"
    )
    assert "in progress" in line and f"run `offers-workers audit verify {job['id']}` again later" in line
    # and once the restore is done, the same command verifies the export
    done = cli("audit", "verify", str(job["id"]), env=env, timeout=60)
    assert done.returncode == 0, done.stderr


def test_an_export_streams_its_rows(scratch_database: str, settings) -> None:
    """Memory stays flat however many rows: nine times the rows, about the same peak."""
    rt = Runtime(load_settings(database_url=scratch_database))

    def add_rows(count: int) -> None:
        with psycopg.connect(scratch_database, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO audit_events (offer_id, kind, actor, data) SELECT 'off_' || n, 'load', 'test',"
                " jsonb_build_object('n', n, 'pad', repeat('x', 150)) FROM generate_series(1, %s) n",
                (count,),
            )

    def export_peak(until: datetime) -> tuple[trail.ExportSummary, int]:
        # Anchored first, as the beat does each minute: the sandbox's S3 runs in this process and
        # keeps what it is sent in memory, which is not the export's to count.
        trail.seal(rt)
        trail.anchor(rt)
        tracemalloc.start()
        try:
            summary = trail.run_export(rt, until)
            return summary, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    try:
        add_rows(100)
        export_peak(datetime.now(UTC) + timedelta(seconds=1))  # warm-up: SDK models, pools
        add_rows(6_000)
        small, small_peak = export_peak(datetime.now(UTC) + timedelta(seconds=2))
        add_rows(54_000)  # about 13 MB as JSON
        large, large_peak = export_peak(datetime.now(UTC) + timedelta(seconds=3))
    finally:
        rt.close()
    assert (small.rows, large.rows) == (6_000, 54_000)
    assert large_peak < 1.5 * small_peak + 1_000_000, (
        f"peaks: {small_peak / 1e6:.1f} MB for 6k rows, {large_peak / 1e6:.1f} MB for 54k"
    )


@pytest.mark.usefixtures("fleet")
def test_the_nightly_task_exports_through_a_worker(celery_app, runtime) -> None:
    with runtime.db.transaction() as conn:
        audit_trail.record_audit(conn, None, "test_row", actor="test")
        before = conn.execute("SELECT count(*) AS n FROM audit_exports WHERE status = 'done'").fetchone()["n"]
    celery_app.send_task("offers.export_audit", kwargs={"until": datetime.now(UTC).isoformat()})

    def exported() -> bool:
        with runtime.db.transaction() as conn:
            return (
                conn.execute("SELECT count(*) AS n FROM audit_exports WHERE status = 'done'").fetchone()["n"] > before
            )

    wait_until(exported, timeout=60, message="the worker's export")


def test_the_fleets_role_may_append_to_the_audit_trail_but_never_change_it(scratch_database: str) -> None:
    role = f"offers_app_{RUN_ID}"
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE ROLE {}").format(psycopg.sql.Identifier(role)))
        try:
            conn.execute(psycopg.sql.SQL("GRANT ALL ON audit_events TO {}").format(psycopg.sql.Identifier(role)))
            migrated = cli(
                "db",
                "migrate",
                env={
                    "OFFERS_DATABASE_URL": scratch_database,
                    "OFFERS_DATABASE_OWNER_URL": scratch_database,
                    "OFFERS_DB_APP_ROLE": role,
                },
            )
            assert migrated.returncode == 0, migrated.stderr
            privileges = {
                p: conn.execute("SELECT has_table_privilege(%s, 'audit_events', %s)", (role, p)).fetchone()[0]
                for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
            }
            assert privileges == {"SELECT": True, "INSERT": True, "UPDATE": False, "DELETE": False, "TRUNCATE": False}

            # As the fleet's role: it appends, it seals, and that is all it can do to a row
            conn.execute(psycopg.sql.SQL("SET ROLE {}").format(psycopg.sql.Identifier(role)))
            audit_trail.record_audit(conn, "off_role", "transition", actor="test", to_state="received")
            [(row_id,)] = conn.execute("SELECT id FROM audit_events WHERE offer_id = 'off_role'").fetchall()
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute("UPDATE audit_events SET actor = 'someone else' WHERE id = %s", (row_id,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute(
                    "UPDATE audit_events SET prev_hash = %s, row_hash = %s WHERE id = %s", ("0" * 64, "f" * 64, row_id)
                )
            _seal_all(conn)
            [(sealed_hash,)] = conn.execute("SELECT row_hash FROM audit_events WHERE id = %s", (row_id,)).fetchall()
            assert sealed_hash is not None
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute("UPDATE audit_events SET row_hash = %s WHERE id = %s", ("f" * 64, row_id))
            conn.execute("RESET ROLE")
        finally:
            conn.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(psycopg.sql.Identifier(role)))
            conn.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(role)))


def _seal_all(conn: psycopg.Connection) -> int:
    """Seal steps on one connection until nothing waits: what the beat's job does, run in place."""
    conn.row_factory = psycopg.rows.dict_row
    try:
        sealed_through = 0
        # Sealing waits for every write transaction on the server older than its window: under a
        # loaded run (other tests' exports hold one open) that takes a moment.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with conn.transaction():
                step = audit_trail.seal_step(conn)
            assert step is not None, "no other sealer runs here"
            sealed_through = step.sealed_through
            if not step.waiting:
                return sealed_through
            time.sleep(0.01)
        raise AssertionError("sealing never caught up")
    finally:
        conn.row_factory = psycopg.rows.tuple_row


@pytest.mark.usefixtures("offers_env")
def test_writers_do_not_wait_for_each_other_and_the_chain_keeps_id_order(scratch_database: str) -> None:
    """Two stages' transactions write audit rows at once: neither waits for the other, and a row whose
    writer commits late is still sealed in its place, never skipped or put out of id order."""
    with (
        psycopg.connect(scratch_database) as slow,
        psycopg.connect(scratch_database) as quick,
        psycopg.connect(scratch_database, autocommit=True) as sealer,
    ):
        # Given a stage whose transaction wrote its audit row and has not committed yet
        audit_trail.record_audit(slow, "off_slow", "transition", actor="test", to_state="received")
        # When another stage writes its row and commits, with no patience for a lock
        quick.execute("SET lock_timeout = '500ms'")
        audit_trail.record_audit(quick, "off_quick", "transition", actor="test", to_state="received")
        quick.commit()
        # Then it was not held up, and the sealer seals neither row while the earlier one may still come
        sealed_before = _seal_all_bounded(sealer, attempts=5)
        [(slow_id,)] = slow.execute("SELECT id FROM audit_events WHERE offer_id = 'off_slow'").fetchall()
        assert sealed_before < slow_id
        # and once the slow one commits, both are sealed, in id order, and the chain verifies
        slow.commit()
        _seal_all(sealer)
        rows = sealer.execute("SELECT offer_id FROM audit_events WHERE row_hash IS NOT NULL ORDER BY id").fetchall()
        assert [r[0] for r in rows] == ["off_slow", "off_quick"]
        # A writer that rolls back leaves a gap in the ids, not in the chain
        audit_trail.record_audit(slow, "off_gone", "transition", actor="test", to_state="received")
        slow.rollback()
        audit_trail.record_audit(quick, "off_after", "transition", actor="test", to_state="received")
        quick.commit()
        _seal_all(sealer)
    checked = cli("audit", "verify-chain", env={"OFFERS_DATABASE_URL": scratch_database})
    assert checked.returncode == 0 and "3 rows" in checked.stdout, checked.stderr


def _seal_all_bounded(conn: psycopg.Connection, attempts: int) -> int:
    """A few seal steps: how far sealing gets while a writer is open."""
    conn.row_factory = psycopg.rows.dict_row
    try:
        step = None
        for _ in range(attempts):
            with conn.transaction():
                step = audit_trail.seal_step(conn)
            time.sleep(0.05)
        assert step is not None
        return step.sealed_through
    finally:
        conn.row_factory = psycopg.rows.tuple_row


@pytest.mark.usefixtures("offers_env")
def test_health_reports_rows_left_unsealed_and_audit_seal_catches_up(
    scratch_database: str, scratch_runtime: str
) -> None:
    env = {"OFFERS_DATABASE_URL": scratch_runtime, "OFFERS_AUDIT_SEAL_MAX_LAG_SECONDS": "30"}
    # Given rows written two minutes ago that no sealer has linked (no beat running)
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        for n in range(3):
            audit_trail.record_audit(conn, f"off_{n}", "transition", actor="test", to_state="received")
        conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_change")
        conn.execute("UPDATE audit_events SET at = at - interval '2 minutes'")
        conn.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_change")
    # When on-call runs health
    health = cli("health", env=env)
    # Then the sealing check fails, naming the rows and their age
    assert health.returncode == 1
    symptom = re.search(
        r"Runbook symptom: Audit rows not sealed into the chain \(audit_sealing: 3 rows, the oldest (\d+) s\)",
        health.stdout,
    )
    assert symptom and 120 <= int(symptom[1]) < 180, health.stdout
    # and `audit seal` links them, after which the check passes and the chain verifies
    sealed = cli("audit", "seal", env=env)
    assert sealed.returncode == 0 and sealed.stdout.startswith("3 rows sealed"), sealed.stderr
    health = cli("health", env=env)
    assert health.returncode == 0 and "all runbook thresholds met" in health.stdout, health.stdout
    assert cli("audit", "verify-chain", env=env).returncode == 0


@pytest.mark.usefixtures("offers_env")
def test_a_temporary_audit_events_table_does_not_steer_the_chain_trigger(scratch_database: str) -> None:
    # An insider with the fleet's own login (here the split runtime role) shadows audit_events with a
    # temporary table of its own: the chain trigger resolves names through the caller's search_path,
    # where temporary tables come first
    role = f"offers_insider_{RUN_ID}"
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE ROLE {}").format(psycopg.sql.Identifier(role)))
        try:
            migrated = cli(
                "db",
                "migrate",
                env={
                    "OFFERS_DATABASE_URL": scratch_database,
                    "OFFERS_DATABASE_OWNER_URL": scratch_database,
                    "OFFERS_DB_APP_ROLE": role,
                },
            )
            assert migrated.returncode == 0, migrated.stderr
            audit_trail.record_audit(conn, "off_before", "transition", actor="test", to_state="received")
            [(highest,)] = conn.execute("SELECT max(id) FROM audit_events").fetchall()
            conn.execute(psycopg.sql.SQL("SET ROLE {}").format(psycopg.sql.Identifier(role)))
            conn.execute("CREATE TEMPORARY TABLE audit_events (id bigserial PRIMARY KEY, note text)")
            conn.execute("SELECT setval(pg_get_serial_sequence('audit_events', 'id'), 1, false)")
            # When it appends a row to the real trail
            [(row_id,)] = conn.execute(
                "INSERT INTO public.audit_events (offer_id, kind, actor, to_state)"
                " VALUES ('off_shadow', 'transition', 'insider', 'cancelled') RETURNING id"
            ).fetchall()
            # Then the row's id still comes from the real trail's sequence, after every id before it,
            # and the temporary table's sequence was never drawn from
            assert row_id > highest
            [(drawn,)] = conn.execute("SELECT is_called FROM pg_temp.audit_events_id_seq").fetchall()
            assert drawn is False
            conn.execute("DROP TABLE pg_temp.audit_events")
            conn.execute("RESET ROLE")
            # and the chain seals it in order and verifies
            assert _seal_all(conn) == row_id
        finally:
            conn.execute("RESET ROLE")
            conn.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(psycopg.sql.Identifier(role)))
            conn.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(role)))
