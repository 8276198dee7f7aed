"""S3 Object Lock on the audit archive, against the sandbox's S3 (moto in server mode): what someone
holding the fleet's AWS keys can and cannot do to what the archive wrote.

The archive under test is ``AuditArchive``; the attacker is a plain boto3 client with the fleet's
keys. Each test writes under a prefix (or a bucket) of its own, so reruns never collide.

moto (5.2) does not enforce all of Object Lock: the sandbox's ``ObjectLockGuard``
(``offers_workers/local/sandbox/aws.py``) refuses, as S3 does, the attacks moto would let through
(shortening or removing a compliance retention, suspending versioning on an Object Lock bucket).
"""

from __future__ import annotations

import base64
import hashlib
import io
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from config.settings import Settings
from offers_workers.domain.errors import PermanentError
from offers_workers.partners.aws_archive import AuditArchive
from offers_workers.partners.fakes import FakeArchive
from offers_workers.partners.interfaces import KeyHistory, ObjectLock, ObjectVersion, StoredObject

KINDS = ["export", "manifest", "anchor"]


@pytest.fixture
def archive(settings: Settings) -> AuditArchive:
    return AuditArchive(settings)


@pytest.fixture
def attacker(settings: Settings) -> Any:
    """A plain boto3 S3 client with the fleet's own keys (the sandbox's test keys here)."""
    assert settings.aws_credentials is not None
    key_id, secret = settings.aws_credentials
    return boto3.client(
        "s3",
        endpoint_url=settings.aws_endpoint_url,
        region_name=settings.aws_region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )


@pytest.fixture
def prefix() -> str:
    return f"object-lock/{uuid.uuid4().hex}"


def write(archive: AuditArchive, kind: str, key: str, body: bytes) -> StoredObject:
    """Write ``body`` as the audit export writes an export, a manifest or an anchor."""
    if kind == "export":
        return archive.put_export(key, io.BytesIO(body), hashlib.sha256(body).hexdigest(), {"rows": "1"})
    return {"manifest": archive.put_manifest, "anchor": archive.put_anchor}[kind](key, body)


def refused(attack: Any) -> ClientError:
    """The error S3 answered ``attack`` with (the test fails if it was carried out)."""
    with pytest.raises(ClientError) as error:
        attack()
    return error.value


def code(error: ClientError) -> tuple[str, int]:
    return error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_write_is_under_compliance_retention_for_the_retention_period(
    settings: Settings, archive: AuditArchive, attacker: Any, prefix: str, kind: str
) -> None:
    # When the archive writes an export, a manifest or an anchor
    before = datetime.now(UTC)
    stored = write(archive, kind, f"{prefix}/{kind}", b'{"n": 1}\n')
    after = datetime.now(UTC)

    # Then S3 holds that version in compliance mode until OFFERS_AUDIT_RETENTION_DAYS from now
    head = attacker.head_object(Bucket=archive.bucket, Key=stored.key, VersionId=stored.version_id)
    retention = timedelta(days=settings.audit_retention_days)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    until = head["ObjectLockRetainUntilDate"]
    assert before + retention - timedelta(seconds=1) <= until <= after + retention  # S3 keeps whole seconds
    # And the archive reads the same lock back
    assert archive.lock(stored.key, stored.version_id) == ObjectLock("COMPLIANCE", until, legal_hold=False)


def test_an_anchor_is_a_standard_encrypted_object_with_its_sha256(archive: AuditArchive, prefix: str) -> None:
    body = b'{"head_id": 42, "head_hash": "ab12"}'
    stored = archive.put_anchor(f"{prefix}/anchor.json", body)
    head = archive.head(stored.key)
    assert (head.storage_class, head.server_side_encryption, head.size) == ("STANDARD", "AES256", len(body))
    assert head.checksum_sha256 == stored.checksum_sha256 == base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert archive.read(stored.key) == body


@pytest.mark.parametrize("kind", KINDS)
def test_deleting_a_locked_version_is_refused(archive: AuditArchive, attacker: Any, prefix: str, kind: str) -> None:
    body = b'{"n": 1}\n'
    stored = write(archive, kind, f"{prefix}/{kind}", body)
    bucket, key, version = archive.bucket, stored.key, stored.version_id

    # When the attacker deletes that version, also asking to bypass a (governance) retention
    for attack in (
        lambda: attacker.delete_object(Bucket=bucket, Key=key, VersionId=version),
        lambda: attacker.delete_object(Bucket=bucket, Key=key, VersionId=version, BypassGovernanceRetention=True),
    ):
        # Then S3 refuses
        assert code(refused(attack)) == ("AccessDenied", 403)
    # And a batch delete too, key by key
    batch = attacker.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": key, "VersionId": version}]}, BypassGovernanceRetention=True
    )
    assert [(e["Key"], e["Code"]) for e in batch.get("Errors", [])] == [(key, "AccessDenied")]
    assert not batch.get("Deleted")

    # And the version is still there, with its bytes
    assert archive.versions(key) == [ObjectVersion(key, version, is_latest=True)]
    archive.restore(key)  # an export is in Glacier (moto restores at once)
    assert archive.read(key, version) == body


@pytest.mark.parametrize("kind", ["manifest", "anchor"])
def test_a_delete_without_a_version_only_adds_a_delete_marker(
    archive: AuditArchive, attacker: Any, prefix: str, kind: str
) -> None:
    body = b'{"n": 1}'
    stored = write(archive, kind, f"{prefix}/{kind}.json", body)

    # When the attacker deletes the key itself
    deleted = attacker.delete_object(Bucket=archive.bucket, Key=stored.key)

    # Then S3 only puts a delete marker in front of it: the locked version is kept, with its bytes
    assert deleted["DeleteMarker"] is True
    assert archive.versions(stored.key) == [ObjectVersion(stored.key, stored.version_id, is_latest=False)]
    assert archive.read(stored.key, stored.version_id) == body
    assert archive.lock(stored.key, stored.version_id).mode == "COMPLIANCE"
    # And what an integrity check sees by key: the key reads as missing, its history shows it hidden
    assert archive.histories(prefix) == [
        KeyHistory(stored.key, [ObjectVersion(stored.key, stored.version_id, is_latest=False)], hidden=True)
    ]
    with pytest.raises(PermanentError):
        archive.read(stored.key)


def test_a_put_to_the_same_key_adds_a_version_and_leaves_the_first_as_it_was(
    archive: AuditArchive, attacker: Any, prefix: str
) -> None:
    first = archive.put_manifest(f"{prefix}/manifest.json", b'{"rows": 100}')

    # When the attacker writes the same key again
    forged = attacker.put_object(Bucket=archive.bucket, Key=first.key, Body=b'{"rows": 99}', ChecksumAlgorithm="SHA256")

    # Then it is a second version: the first keeps its bytes and its lock
    assert archive.versions(first.key) == [
        ObjectVersion(first.key, forged["VersionId"], is_latest=True),
        ObjectVersion(first.key, first.version_id, is_latest=False),
    ]
    assert archive.read(first.key, first.version_id) == b'{"rows": 100}'
    assert archive.lock(first.key, first.version_id).mode == "COMPLIANCE"
    # And the forged latest version gives itself away: it was written without the archive's lock
    assert archive.read(first.key) == b'{"rows": 99}'
    assert archive.lock(first.key) == ObjectLock(None, None, legal_hold=False)


@pytest.mark.parametrize(
    "retention",
    [
        pytest.param(lambda until: {"Mode": "COMPLIANCE", "RetainUntilDate": until - timedelta(days=1)}, id="shorten"),
        pytest.param(lambda until: {"Mode": "GOVERNANCE", "RetainUntilDate": until}, id="to-governance"),
        pytest.param(lambda until: {}, id="remove"),
    ],
)
def test_a_compliance_retention_cannot_be_shortened_or_removed(
    archive: AuditArchive, attacker: Any, prefix: str, retention: Any
) -> None:
    stored = archive.put_anchor(f"{prefix}/anchor.json", b"{}")
    locked = archive.lock(stored.key, stored.version_id)
    assert locked.retain_until is not None

    # When the attacker shortens the retention, turns it to governance mode or removes it
    error = refused(
        lambda: attacker.put_object_retention(
            Bucket=archive.bucket,
            Key=stored.key,
            VersionId=stored.version_id,
            Retention=retention(locked.retain_until),
            BypassGovernanceRetention=True,
        )
    )

    # Then S3 refuses, and the lock is as it was
    assert code(error) == ("AccessDenied", 403)
    assert archive.lock(stored.key, stored.version_id) == locked


def test_versioning_cannot_be_suspended_to_delete_a_locked_version(settings: Settings, attacker: Any) -> None:
    # A bucket of its own: a suspension let through must not reach the other tests' bucket
    bucket = f"offers-lock-{uuid.uuid4().hex[:12]}"
    attacker.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    archive = AuditArchive(settings.model_copy(update={"audit_bucket": bucket}))
    stored = archive.put_manifest("manifest.json", b'{"rows": 100}')

    # When the attacker suspends versioning, then deletes the key (on a suspended bucket, that removes it)
    try:
        attacker.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
        suspension: ClientError | None = None
    except ClientError as error:
        suspension = error
    attacker.delete_object(Bucket=bucket, Key=stored.key)

    # Then the locked version is still there, and S3 had refused the suspension
    assert archive.read(stored.key, stored.version_id) == b'{"rows": 100}'
    assert suspension is not None and code(suspension) == ("InvalidBucketState", 409)


@pytest.mark.parametrize("kind", KINDS)
def test_a_legal_hold_goes_on_and_off(archive: AuditArchive, attacker: Any, prefix: str, kind: str) -> None:
    stored = write(archive, kind, f"{prefix}/{kind}", b"{}")
    retention = archive.lock(stored.key).retain_until

    archive.set_legal_hold(stored.key, on=True)
    assert archive.lock(stored.key) == ObjectLock("COMPLIANCE", retention, legal_hold=True)
    head = attacker.head_object(Bucket=archive.bucket, Key=stored.key, VersionId=stored.version_id)
    assert head["ObjectLockLegalHoldStatus"] == "ON"

    archive.set_legal_hold(stored.key, on=False)
    assert archive.lock(stored.key) == ObjectLock("COMPLIANCE", retention, legal_hold=False)
    head = attacker.head_object(Bucket=archive.bucket, Key=stored.key, VersionId=stored.version_id)
    assert head["ObjectLockLegalHoldStatus"] == "OFF"


def test_lock_enabled_says_whether_the_bucket_has_object_lock(
    settings: Settings, archive: AuditArchive, attacker: Any
) -> None:
    assert archive.lock_enabled() is True
    plain = f"offers-plain-{uuid.uuid4().hex[:12]}"
    attacker.create_bucket(Bucket=plain)
    assert AuditArchive(settings.model_copy(update={"audit_bucket": plain})).lock_enabled() is False


def test_histories_page_through_every_key_in_order(archive: AuditArchive, attacker: Any, prefix: str) -> None:
    # More keys than one page of S3's listing (1,000)
    keys = [f"{prefix}/anchors/{n:05d}.json" for n in range(1_005)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: attacker.put_object(Bucket=archive.bucket, Key=key, Body=b"{}"), keys))
    attacker.put_object(Bucket=archive.bucket, Key=f"{prefix}-sibling/not-under-the-prefix", Body=b"{}")

    histories = archive.histories(f"{prefix}/anchors/")
    assert [h.key for h in histories] == keys
    assert all(len(h.versions) == 1 and not h.hidden for h in histories)
    assert archive.histories(f"{prefix}/nothing/") == []


def test_the_fake_lets_a_version_go_only_once_its_retention_and_legal_hold_are_over() -> None:
    fake = FakeArchive(retention_days=400)
    stored = fake.put_anchor("anchors/1.json", b"{}")
    with pytest.raises(PermanentError) as denied:
        fake.delete(stored.key, stored.version_id)
    assert (denied.value.code, denied.value.http_status) == ("AccessDenied", 403)

    fake.set_legal_hold(stored.key, on=True)
    fake.advance_clock(400 * 86_400 + 1)
    with pytest.raises(PermanentError):
        fake.delete(stored.key, stored.version_id)  # the retention is over, the legal hold is not

    fake.set_legal_hold(stored.key, on=False)
    fake.delete(stored.key, stored.version_id)
    assert fake.versions(stored.key) == []
