"""The audit trail against the people best placed to tamper with it: whoever holds the fleet's own
database login, the schema owner's login, or the fleet's AWS keys.

Each test is a fleet's trail of its own (a database, its runtime role, an archive bucket with Object
Lock in the sandbox's S3) attacked one way. Every attack is refused, or `audit verify` names it and
exits 1. Each attack is a row of the drill table: what it did, and what stopped or named it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import psycopg
import psycopg.sql
import pytest
from botocore.exceptions import ClientError

from config.settings import load_settings
from offers_workers.local.sandbox import ensure_aws_resources
from offers_workers.store import audit_trail, db, roles
from tests.conftest import DRILL_RESULTS, RUN_ID, SERVER, _create_database, _drop_database, cli, wait_until

pytestmark = pytest.mark.usefixtures("offers_env")


@dataclass
class Trail:
    """One fleet's audit trail: its two logins, its bucket and the environment its CLI runs with."""

    runtime_url: str
    owner_url: str
    bucket: str
    env: dict[str, str]

    def write(self, n: int, offer: str = "off") -> list[int]:
        """``n`` rows as the fleet writes them (its own login, the saga's one path); their ids."""
        with psycopg.connect(self.runtime_url, autocommit=True) as conn:
            for i in range(n):
                audit_trail.record_audit(
                    conn, f"{offer}_{i}", "transition", actor="worker", from_state="received", to_state="validated"
                )
            return [
                r[0]
                for r in conn.execute("SELECT id FROM audit_events WHERE offer_id LIKE %s ORDER BY id", (f"{offer}_%",))
            ]

    def verify(self, *args: str) -> tuple[int, str]:
        """`audit verify --json`: its exit code and its findings, a line each."""
        done = cli("audit", "verify", "--json", *args, env=self.env)
        try:
            return done.returncode, "\n".join(json.loads(done.stdout)["findings"])
        except ValueError:
            return done.returncode, done.stdout + done.stderr

    def anchor(self) -> None:
        done = cli("audit", "anchor", env=self.env)
        assert done.returncode == 0, done.stderr

    def export(self) -> int:
        done = cli("audit", "export", "--until", (datetime.now(UTC) + timedelta(seconds=1)).isoformat(), env=self.env)
        assert done.returncode == 0, done.stderr
        with psycopg.connect(self.runtime_url) as conn:
            return conn.execute("SELECT max(id) FROM audit_exports WHERE status = 'done'").fetchone()[0]


@pytest.fixture
def trail() -> Iterator[Trail]:
    token = secrets.token_hex(3)
    owner_url, name = _create_database(SERVER["url"], suffix=token)
    role = f"offers_rt_{RUN_ID}_{token}"
    try:
        runtime_url = roles.provision_runtime_role(owner_url, role)
        bucket = f"offers-audit-{RUN_ID}-{token}"
        ensure_aws_resources(load_settings(audit_bucket=bucket))
        env = {
            "OFFERS_DATABASE_URL": runtime_url,
            "OFFERS_DATABASE_OWNER_URL": owner_url,
            "OFFERS_AUDIT_BUCKET": bucket,
        }
        migrated = cli("db", "migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        yield Trail(runtime_url, owner_url, bucket, env)
    finally:
        _drop_database(SERVER["url"], name)
        roles.drop_role(SERVER["url"], role)


def attacker_s3() -> Any:
    """A plain S3 client with the fleet's own AWS keys, from the environment the README names."""
    return boto3.client(
        "s3",
        endpoint_url=os.environ["OFFERS_AWS_ENDPOINT_URL"],
        region_name=os.environ.get("OFFERS_AWS_REGION", "us-east-1"),
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def drill(name: str, outcome: str) -> None:
    DRILL_RESULTS.append({"drill": f"audit: {name}", "faults": 1, "chain": outcome})


def owner_session(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


# --- the fleet's own login ------------------------------------------------------------------------


REFUSED_TO_THE_RUNTIME = {
    "update a row": "UPDATE audit_events SET to_state = 'rejected'",
    "delete a row": "DELETE FROM audit_events",
    "truncate": "TRUNCATE audit_events",
    "turn the guard off": "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_change",
    "set a hash": "UPDATE audit_events SET row_hash = repeat('f', 64)",
    "rewrite the seal": "UPDATE audit_seal SET last_hash = repeat('f', 64)",
    "link rows itself": "SELECT audit_seal_through(1000000)",
    "book a fake export": "INSERT INTO audit_exports (until, first_row_id, last_row_id, object_key, manifest_key,"
    " storage_class, status) VALUES (now(), 1, 999999999, 'k', 'm', 'GLACIER', 'done')",
    "book a fake anchor": "INSERT INTO audit_anchors (first_id, last_id, prev_hash, last_hash, rows, sealed_at,"
    " object_key) VALUES (1, 999999999, '', '', 0, now(), 'k')",
    "erase a verification": "DELETE FROM audit_verifications",
    "backdate a row": "INSERT INTO audit_events (at, offer_id, kind, to_state, reason, actor)"
    " VALUES (now() - interval '1 year', 'off_3', 'transition', 'cancelled', 'ops', 'ops')",
    "export past the sealed end": "SELECT * FROM audit_export_start(now(), 1, 999999999, 'k', 'm', 'GLACIER')",
}


def test_the_fleets_login_cannot_change_the_trail_or_its_books(trail: Trail) -> None:
    ids = trail.write(5)
    trail.anchor()
    for attack, statement in REFUSED_TO_THE_RUNTIME.items():
        with owner_session(trail.runtime_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
        drill(f"fleet login: {attack}", "refused")
    # Nothing changed: the trail verifies against its anchors, every row as written
    code, out = trail.verify()
    assert code == 0, out
    with owner_session(trail.runtime_url) as conn:
        assert conn.execute("SELECT count(*) FROM audit_events").fetchone()[0] == len(ids)


def test_health_reports_a_fleet_login_that_could_rewrite_the_trail(trail: Trail) -> None:
    as_fleet = cli("health", env=trail.env)
    assert re.search(r"audit_privileges\s+│ append and read\s+│ append and read only\s+│ ok", as_fleet.stdout), (
        as_fleet.stdout
    )
    # Run as the owner (the one-login set-up), health fails and names why
    as_owner = cli("health", env={**trail.env, "OFFERS_DATABASE_URL": trail.owner_url})
    assert as_owner.returncode == 1
    assert "audit_privileges" in as_owner.stdout + as_owner.stderr
    assert "is a superuser" in as_owner.stdout + as_owner.stderr


def test_work_the_fleets_login_books_but_never_did_is_named(trail: Trail) -> None:
    trail.write(3, "off_a")
    trail.export()
    trail.anchor()
    last = max(trail.write(3, "off_b"))
    with owner_session(trail.runtime_url) as conn:

        def sealed_through_last() -> int:
            conn.execute("SELECT * FROM audit_seal_step()")
            [(through,)] = conn.execute("SELECT sealed_through FROM audit_seal").fetchall()
            return through if through >= last else 0

        # Sealing waits for transactions still open anywhere on the server (another test's, on a busy CI)
        sealed = wait_until(sealed_through_last, timeout=30, interval=0.2, message="the new rows sealed")
        [(after,)] = conn.execute("SELECT max(last_row_id) FROM audit_exports WHERE status = 'done'").fetchall()
        # It books an export of the new rows, and an anchor of them, without writing either to S3
        [job] = conn.execute(
            "SELECT * FROM audit_export_start(now(), %s, %s, 'audit/fake.jsonl.gz', 'audit/fake.manifest.json', 'GLACIER')",
            (after + 1, sealed),
        ).fetchall()
        conn.execute("SELECT * FROM audit_export_done(%s, 3, repeat('a', 64))", (job[0],))
        [cut] = conn.execute("SELECT id, first_id, last_id FROM audit_anchor_next(1000)").fetchall()
        conn.execute("SELECT * FROM audit_anchor_written(%s, 'fake')", (cut[0],))
    code, out = trail.verify()
    assert code == 1, out
    assert f"export {job[0]} (rows {after + 1} to {sealed}): audit/fake.manifest.json is missing from S3" in out
    assert "anchored by the book, but S3 holds no anchor for them" in out or "were never anchored" in out, out
    drill("fleet login: books an export it never wrote", "named by audit verify")
    drill("fleet login: books an anchor it never wrote", "named by audit verify")


# --- the owner's login ------------------------------------------------------------------------------


def test_an_owner_who_deletes_rewrites_and_rechains_rows_is_named(trail: Trail) -> None:
    ids = trail.write(10)
    trail.anchor()
    deleted, rewritten = ids[3], ids[5]
    with owner_session(trail.owner_url) as conn:
        # The attack: turn the guard off, delete one row, rewrite another, re-chain the rest
        # with the database's own digest and move the seal's head
        conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_change")
        conn.execute("DELETE FROM audit_events WHERE id = %s", (deleted,))
        conn.execute("UPDATE audit_events SET to_state = 'rejected' WHERE id = %s", (rewritten,))
        conn.execute(
            """
            DO $$
            DECLARE r audit_events; prev text := repeat('0', 64);
            BEGIN
                FOR r IN SELECT * FROM audit_events WHERE row_hash IS NOT NULL ORDER BY id LOOP
                    UPDATE audit_events SET prev_hash = prev, row_hash = audit_row_digest(r, prev) WHERE id = r.id;
                    prev := audit_row_digest(r, prev);
                END LOOP;
                UPDATE audit_seal SET last_hash = prev;
            END $$
            """
        )
        conn.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_change")
    # The chain alone cannot tell: it was rebuilt whole
    chain = cli("audit", "verify-chain", env=trail.env)
    assert chain.returncode == 0 and "audit chain intact" in chain.stdout, chain.stdout + chain.stderr
    # The anchors can, and name each row
    code, out = trail.verify()
    assert code == 1, out
    assert f"row {deleted}: deleted" in out
    assert f"row {rewritten}: re-chained" in out
    # and the nightly export refuses to archive the rebuilt rows (its manifest would anchor them)
    export = cli("audit", "export", "--until", (datetime.now(UTC) + timedelta(seconds=1)).isoformat(), env=trail.env)
    assert export.returncode == 1, export.stdout + export.stderr
    assert "the audit trail differs from its anchors, refusing to archive it" in export.stdout + export.stderr
    drill("owner: deletes a row and re-chains", "named by audit verify")
    drill("owner: rewrites a row and re-chains", "named by audit verify")


def test_an_owner_who_backdates_a_row_or_slips_one_into_a_sealed_stretch_is_named(trail: Trail) -> None:
    trail.write(3, "off_a")
    trail.anchor()
    # An id drawn and rolled back leaves a gap in a stretch about to be sealed
    with psycopg.connect(trail.runtime_url) as conn:
        audit_trail.record_audit(conn, "off_gap", "transition", actor="worker", to_state="validated")
        [(gap,)] = conn.execute("SELECT max(id) FROM audit_events").fetchall()
        conn.rollback()
    trail.write(3, "off_b")
    trail.anchor()
    with owner_session(trail.owner_url) as conn:
        conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_chain")
        # A row dated a year back, drawn as the next id: sealed and anchored as any other
        [(backdated,)] = conn.execute(
            "INSERT INTO audit_events (id, at, offer_id, kind, from_state, to_state, reason, actor)"
            " VALUES (nextval('audit_events_id_seq'), now() - interval '1 year', 'off_3', 'transition', 'submitted',"
            " 'cancelled', 'ops', 'ops') RETURNING id"
        ).fetchall()
        conn.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_chain")
    trail.anchor()
    with owner_session(trail.owner_url) as conn:
        # And a row in the gap of a stretch already anchored, linked in place
        conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_chain")
        conn.execute(
            "INSERT INTO audit_events (id, at, offer_id, kind, to_state, actor, prev_hash, row_hash)"
            " VALUES (%s, now(), 'off_9', 'transition', 'cancelled', 'ops', repeat('0', 64), repeat('0', 64))",
            (gap,),
        )
        conn.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_chain")
    code, out = trail.verify()
    assert code == 1, out
    assert f"row {backdated}: dated" in out and "before rows already sealed" in out, out
    assert f"row {gap}: not in anchor" in out, out
    drill("owner: inserts a row dated a year back", "named by audit verify")
    drill("owner: inserts a row into a sealed stretch", "named by audit verify")


def test_an_owner_who_fakes_or_removes_an_export_is_named(trail: Trail) -> None:
    trail.write(4, "off_a")
    real = trail.export()
    trail.write(4, "off_b")
    with owner_session(trail.owner_url) as conn:
        # A finished export far past the end: the next export thinks everything is archived
        [(fake,)] = conn.execute(
            "INSERT INTO audit_exports (until, first_row_id, last_row_id, row_count, object_key, manifest_key,"
            " storage_class, status, sha256) VALUES (now(), 1000, 999999999, 5, 'audit/x.jsonl.gz',"
            " 'audit/x.manifest.json', 'GLACIER', 'done', repeat('b', 64)) RETURNING id"
        ).fetchall()
    nothing = cli("audit", "export", "--until", (datetime.now(UTC) + timedelta(seconds=1)).isoformat(), env=trail.env)
    assert nothing.returncode == 0
    code, out = trail.verify()
    assert code == 1, out
    assert f"export {fake} (rows 1000 to 999999999): audit/x.manifest.json is missing from S3" in out, out
    with owner_session(trail.owner_url) as conn:
        [(manifest_key,)] = conn.execute("SELECT manifest_key FROM audit_exports WHERE id = %s", (real,)).fetchall()
        conn.execute("DELETE FROM audit_exports WHERE id IN (%s, %s)", (real, fake))
    code, out = trail.verify()
    assert code == 1, out
    assert f"export manifest {manifest_key} is in S3, but no finished export in Postgres has it" in out, out
    drill("owner: books a fake export", "named by audit verify")
    drill("owner: removes an export from the book", "named by audit verify")


# --- the fleet's AWS keys -----------------------------------------------------------------------------


def test_exports_and_anchors_cannot_be_deleted_or_overwritten_during_their_retention(trail: Trail) -> None:
    trail.write(4)
    export_id = trail.export()
    trail.anchor()
    s3 = attacker_s3()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=trail.bucket)["Contents"]]
    export_object = next(k for k in keys if k.endswith(".jsonl.gz"))
    manifest = next(k for k in keys if k.endswith(".manifest.json"))
    anchor_key = next(k for k in keys if "/audit-anchors/" in k)
    originals = {}
    for key in (export_object, manifest, anchor_key):
        [version] = s3.list_object_versions(Bucket=trail.bucket, Prefix=key)["Versions"]
        # The export is in Glacier (not readable without a restore): its ETag stands for its bytes
        originals[key] = (version["VersionId"], version["ETag"])
        retention = s3.get_object_retention(Bucket=trail.bucket, Key=key, VersionId=version["VersionId"])["Retention"]
        assert retention["Mode"] == "COMPLIANCE"
        assert retention["RetainUntilDate"] > datetime.now(UTC) + timedelta(days=364)
        # Deleting the version is refused, and so is shortening its retention
        with pytest.raises(ClientError):
            s3.delete_object(Bucket=trail.bucket, Key=key, VersionId=version["VersionId"])
        with pytest.raises(ClientError):
            s3.put_object_retention(
                Bucket=trail.bucket,
                Key=key,
                VersionId=version["VersionId"],
                Retention={"Mode": "GOVERNANCE", "RetainUntilDate": datetime.now(UTC) + timedelta(days=1)},
            )
    drill("AWS keys: delete an export, manifest or anchor", "refused")
    # Overwriting adds a version beside the original; a plain delete only hides it
    s3.put_object(Bucket=trail.bucket, Key=manifest, Body=b'{"row_count": 0}')
    s3.put_object(Bucket=trail.bucket, Key=export_object, Body=b"not the export")
    s3.delete_object(Bucket=trail.bucket, Key=anchor_key)
    for key, (version_id, etag) in originals.items():
        assert s3.head_object(Bucket=trail.bucket, Key=key, VersionId=version_id)["ETag"] == etag
    code, out = trail.verify()
    assert code == 1, out
    assert f"{manifest} was overwritten after it was written" in out, out
    assert f"{export_object} was overwritten after it was written" in out, out
    assert f"anchor {anchor_key}: hidden behind a delete marker" in out, out
    drill("AWS keys: overwrite an export and its manifest", "named by audit verify")
    # The restore check reads the export as S3 serves it now: the rewrite is named, not parsed
    restored = cli("audit", "verify", str(export_id), env=trail.env)
    assert restored.returncode == 1, restored.stdout + restored.stderr
    assert f"export {export_id}: object checksum" in restored.stderr, restored.stderr
    assert "Traceback" not in restored.stderr, restored.stderr
    drill("AWS keys: hide an anchor behind a delete marker", "named by audit verify")
    # A legal hold, from the CLI, on the export
    held = cli("audit", "legal-hold", "set", str(export_id), env=trail.env)
    assert held.returncode == 0, held.stderr
    status = s3.get_object_legal_hold(Bucket=trail.bucket, Key=manifest, VersionId=originals[manifest][0])
    assert status["LegalHold"]["Status"] == "ON"
    lifted = cli("audit", "legal-hold", "lift", str(export_id), env=trail.env)
    assert lifted.returncode == 0, lifted.stderr
    missing = cli("audit", "legal-hold", "set", "999999", env=trail.env)
    assert missing.returncode == 1 and "no finished export 999999" in missing.stderr


def test_a_trail_written_before_anchors_existed_verifies_and_is_anchored_whole(offers_env: dict[str, str]) -> None:
    token = secrets.token_hex(3)
    owner_url, name = _create_database(SERVER["url"], suffix=token)
    bucket = f"offers-audit-{RUN_ID}-{token}"
    try:
        ensure_aws_resources(load_settings(audit_bucket=bucket))
        db.migrate(owner_url, through=14)
        with owner_session(owner_url) as conn:
            for i in range(20):
                audit_trail.record_audit(conn, f"off_{i}", "transition", actor="worker", to_state="validated")
        env = {"OFFERS_DATABASE_URL": owner_url, "OFFERS_DATABASE_OWNER_URL": owner_url, "OFFERS_AUDIT_BUCKET": bucket}
        migrated = cli("db", "migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        done = cli("audit", "verify", "--json", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert '"rows": 20' in done.stdout and '"anchors": 1' in done.stdout, done.stdout
    finally:
        _drop_database(SERVER["url"], name)


def test_a_bucket_without_object_lock_is_named(trail: Trail) -> None:
    # The archive pointed at a bucket made without Object Lock (by mistake, or to delete from later)
    plain = f"{trail.bucket}-plain"
    s3 = attacker_s3()
    s3.create_bucket(Bucket=plain)
    s3.put_bucket_versioning(Bucket=plain, VersioningConfiguration={"Status": "Enabled"})
    trail.write(2)
    code, out = Trail(trail.runtime_url, trail.owner_url, plain, {**trail.env, "OFFERS_AUDIT_BUCKET": plain}).verify()
    assert code == 1, out
    assert f"bucket {plain}: Object Lock is off: exports and anchors can be deleted" in out, out
    drill("AWS account: a bucket without Object Lock", "named by audit verify")


def test_objects_the_fleets_aws_keys_slip_among_anchors_and_manifests_are_named(trail: Trail) -> None:
    trail.write(3, "off_a")
    trail.anchor()
    trail.write(3, "off_b")
    export_id = trail.export()
    s3 = attacker_s3()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=trail.bucket)["Contents"]]
    anchors = sorted(k for k in keys if "/audit-anchors/" in k)
    folder = anchors[-1].rsplit("/", 1)[0]
    # After the fleet's anchors (a listing is in key order): bytes that are not JSON, and JSON in the
    # anchor's format with its fields missing or of the wrong type
    not_json, hollow, mistyped = f"{folder}/~1.json", f"{folder}/~2.json", f"{folder}/~3.json"
    s3.put_object(Bucket=trail.bucket, Key=not_json, Body=b"\x00not json")
    s3.put_object(Bucket=trail.bucket, Key=hollow, Body=b'{"format": "offers-audit-anchor/1"}')
    s3.put_object(
        Bucket=trail.bucket,
        Key=mistyped,
        Body=json.dumps({"format": "offers-audit-anchor/1", "first_id": "1", "hashes": "all"}).encode(),
    )
    # The owner books an export whose manifest is such an object
    fake_manifest = f"{folder.rsplit('/', 1)[0]}/audit/forged.manifest.json"
    s3.put_object(Bucket=trail.bucket, Key=fake_manifest, Body=b'{"export_id": 1}')
    with owner_session(trail.owner_url) as conn:
        [(fake,)] = conn.execute(
            "INSERT INTO audit_exports (until, first_row_id, last_row_id, row_count, object_key, manifest_key,"
            " storage_class, status, sha256) VALUES (now(), 1000, 1001, 2, %s, %s, 'GLACIER', 'done',"
            " repeat('b', 64)) RETURNING id",
            (fake_manifest.removesuffix(".manifest.json") + ".jsonl.gz", fake_manifest),
        ).fetchall()
    # and one whose manifest is whole but for a checksum that is not hex, beside an object S3 checksummed
    odd_key = f"{folder.rsplit('/', 1)[0]}/audit/odd.jsonl.gz"
    odd_manifest = odd_key.removesuffix(".jsonl.gz") + ".manifest.json"
    s3.put_object(Bucket=trail.bucket, Key=odd_key, Body=b"rows", ChecksumAlgorithm="SHA256")
    manifest = {
        "export_id": 1,
        "object_key": odd_key,
        "row_count": 2,
        "sha256": "z" * 64,
        "first_row_id": 2000,
        "last_row_id": 2001,
        "first_prev_hash": "0" * 64,
        "last_hash": "0" * 64,
        "until": datetime.now(UTC).isoformat(),
        "storage_class": "GLACIER",
    }
    s3.put_object(Bucket=trail.bucket, Key=odd_manifest, Body=json.dumps(manifest).encode())
    with owner_session(trail.owner_url) as conn:
        [(odd,)] = conn.execute(
            "INSERT INTO audit_exports (until, first_row_id, last_row_id, row_count, object_key, manifest_key,"
            " storage_class, status, sha256) VALUES (now(), 2000, 2001, 2, %s, %s, 'GLACIER', 'done',"
            " repeat('z', 64)) RETURNING id",
            (odd_key, odd_manifest),
        ).fetchall()
    code, out = trail.verify()
    assert code == 1, out
    assert f"anchor {not_json}: not an anchor the fleet wrote (not JSON)" in out, out
    assert f"export {odd} (rows 2000 to 2001): its manifest {odd_manifest} is not one the fleet wrote (sha256:" in out
    assert f"anchor {hollow}: not an anchor the fleet wrote (first_id: Field required)" in out, out
    assert f"anchor {mistyped}: not an anchor the fleet wrote (first_id: Input should be a valid integer)" in out, out
    assert f"export {fake} (rows 1000 to 1001): its manifest {fake_manifest} is not one the fleet wrote" in out, out
    # Restored end to end, the forged export is named and the real one still checks out
    forged = cli("audit", "verify", str(fake), env=trail.env)
    assert forged.returncode == 1, forged.stdout + forged.stderr
    assert f"export {fake}: its manifest {fake_manifest} is not one the fleet wrote" in forged.stderr, forged.stderr
    restored = cli("audit", "verify", str(export_id), env=trail.env)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    # A forged export whose manifest matches its object's checksum: the restore check reads the
    # object, finds no export in it, and says so
    junk_key = f"{folder.rsplit('/', 1)[0]}/audit/junk.jsonl.gz"
    junk_manifest = junk_key.removesuffix(".jsonl.gz") + ".manifest.json"
    s3.put_object(Bucket=trail.bucket, Key=junk_key, Body=b"junk")
    checksum = hashlib.sha256(b"junk").hexdigest()
    s3.put_object(
        Bucket=trail.bucket,
        Key=junk_manifest,
        Body=json.dumps({**manifest, "object_key": junk_key, "sha256": checksum}).encode(),
    )
    with owner_session(trail.owner_url) as conn:
        [(junk,)] = conn.execute(
            "INSERT INTO audit_exports (until, first_row_id, last_row_id, row_count, object_key, manifest_key,"
            " storage_class, status, sha256) VALUES (now(), 2000, 2001, 2, %s, %s, 'GLACIER', 'done', %s)"
            " RETURNING id",
            (junk_key, junk_manifest, checksum),
        ).fetchall()
    read = cli("audit", "verify", str(junk), env=trail.env)
    assert read.returncode == 1, read.stdout + read.stderr
    assert f"export {junk}: the archive is not an export the fleet wrote (BadGzipFile" in read.stderr, read.stderr
    drill("AWS keys: slip junk among the anchors", "named by audit verify")
    drill("owner + AWS keys: book an export with a forged manifest", "named by audit verify")
