"""AWS S3: the audit archive (Glacier storage classes), written once a night and restored to verify.

Every object is written under S3 Object Lock in compliance mode: no one, the AWS account's root
included, deletes a version or shortens its retention before ``audit_retention_days`` have passed.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from config.settings import Settings
from offers_workers.partners.aws_events import client_kwargs, sort_error
from offers_workers.partners.interfaces import (
    NEEDS_RESTORE,
    ArchivedObject,
    KeyHistory,
    ObjectLock,
    ObjectVersion,
    RestoreInProgress,
    StoredObject,
)

__all__ = ["NEEDS_RESTORE", "AuditArchive", "RestoreInProgress"]


def _stored(key: str, response: dict[str, Any]) -> StoredObject:
    return StoredObject(key, response.get("VersionId"), response.get("ChecksumSHA256"))


def _version(version_id: str | None) -> dict[str, str]:
    return {"VersionId": version_id} if version_id else {}


class AuditArchive:
    """``Archive`` on S3 through boto3 (see ``interfaces.Archive``)."""

    def __init__(self, settings: Settings) -> None:
        if not settings.audit_bucket:
            raise ValueError("OFFERS_AUDIT_BUCKET is not set")
        # A nightly batch, not a saga step: let the SDK retry S3's 5xx, throttling and resets itself.
        config = Config(
            connect_timeout=settings.partner_connect_timeout,
            read_timeout=max(settings.partner_read_timeout, 30),
            retries={"max_attempts": 5, "mode": "standard"},
        )
        self._s3 = boto3.client("s3", **client_kwargs(settings, config))
        self.bucket = settings.audit_bucket
        self.storage_class = settings.audit_storage_class
        self.kms_key_id = settings.audit_kms_key_id
        self.retention_days = settings.audit_retention_days

    def _encryption(self) -> dict[str, str]:
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {"ServerSideEncryption": "AES256"}

    def _retention(self) -> dict[str, Any]:
        # Compliance, not governance: no permission (s3:BypassGovernanceRetention included) lifts it.
        until = datetime.now(UTC) + timedelta(days=self.retention_days)
        return {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": until}

    def put_export(self, key: str, body: IO[bytes], sha256_hex: str, metadata: dict[str, str]) -> StoredObject:
        """Upload one export; S3 checks the SHA-256 we computed while writing it."""
        try:
            response = self._s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                StorageClass=self.storage_class,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256_hex)).decode(),
                ContentType="application/x-ndjson",
                ContentEncoding="gzip",
                Metadata=metadata,
                **self._encryption(),
                **self._retention(),
            )
        except (ClientError, BotoCoreError) as exc:
            raise sort_error(exc) from exc
        return _stored(key, response)

    def put_manifest(self, key: str, body: bytes) -> StoredObject:
        """Upload a manifest in the standard class: readable without a restore."""
        # The manifest stays readable without a restore: it is what a restore is checked against.
        return self._put_json(key, body)

    def put_anchor(self, key: str, body: bytes) -> StoredObject:
        """Upload a chain anchor (a small JSON object) in the standard class, under the same lock."""
        return self._put_json(key, body)

    def _put_json(self, key: str, body: bytes) -> StoredObject:
        try:
            response = self._s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType="application/json",
                ChecksumAlgorithm="SHA256",
                **self._encryption(),
                **self._retention(),
            )
        except (ClientError, BotoCoreError) as exc:
            raise sort_error(exc) from exc
        return _stored(key, response)

    def head(self, key: str) -> ArchivedObject:
        """What S3 knows of ``key`` (with its stored checksum)."""
        try:
            head = self._s3.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except (ClientError, BotoCoreError) as exc:
            raise sort_error(exc) from exc
        return ArchivedObject(
            key=key,
            # S3 leaves StorageClass out of HEAD for the standard class.
            storage_class=head.get("StorageClass") or "STANDARD",
            restore=head.get("Restore"),
            checksum_sha256=head.get("ChecksumSHA256"),
            server_side_encryption=head.get("ServerSideEncryption"),
            version_id=head.get("VersionId"),
            size=int(head.get("ContentLength") or 0),
        )

    def versions(self, key: str) -> list[ObjectVersion]:
        """Every stored version of exactly ``key`` (S3 lists by prefix)."""
        try:
            listed = self._s3.list_object_versions(Bucket=self.bucket, Prefix=key)
        except (ClientError, BotoCoreError) as exc:
            raise sort_error(exc) from exc
        return [
            ObjectVersion(key, v["VersionId"], bool(v.get("IsLatest")))
            for v in listed.get("Versions", [])
            if v["Key"] == key
        ]

    def histories(self, prefix: str) -> list[KeyHistory]:
        """Every key under ``prefix`` that holds a version, with its versions newest first, from one
        paginated listing (a verification reads thousands of anchors: a call per key would not do)."""
        found: dict[str, list[ObjectVersion]] = {}
        hidden: set[str] = set()
        try:
            for page in self._s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=prefix):
                for v in page.get("Versions", []):
                    found.setdefault(v["Key"], []).append(
                        ObjectVersion(v["Key"], v["VersionId"], bool(v.get("IsLatest")))
                    )
                hidden.update(m["Key"] for m in page.get("DeleteMarkers", []) if m.get("IsLatest"))
        except (ClientError, BotoCoreError) as exc:
            raise sort_error(exc) from exc
        # S3 lists a key's versions newest first.
        return [KeyHistory(key, found[key], key in hidden) for key in sorted(found)]

    def restore(
        self, key: str, *, days: int = 1, tier: str = "Standard", timeout_s: float = 600, poll_s: float = 1
    ) -> None:
        """Ask for a restore of an archived object and wait until it is readable.

        Raises RestoreInProgress when it is not readable within ``timeout_s``, or at once when an
        earlier request is still running: the caller comes back later, the request stands.
        """
        head = self.head(key)
        if head.readable:
            return
        if 'ongoing-request="true"' in (head.restore or ""):
            # Asked for earlier and still running: it will not end within this call's wait either.
            raise RestoreInProgress(self.bucket, key)
        try:
            self._s3.restore_object(
                Bucket=self.bucket, Key=key, RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}}
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "RestoreAlreadyInProgress":
                raise sort_error(exc) from exc
        deadline = time.monotonic() + timeout_s
        while not self.head(key).readable:
            if time.monotonic() > deadline:
                raise RestoreInProgress(self.bucket, key)
            time.sleep(poll_s)

    def download(self, key: str, into: IO[bytes]) -> None:
        """Stream ``key`` into ``into``."""
        try:
            self._s3.download_fileobj(self.bucket, key, into)
        except (ClientError, BotoCoreError) as exc:
            raise sort_error(exc) from exc

    def read(self, key: str, version_id: str | None = None) -> bytes:
        """The whole body of a small object (a manifest, an anchor): its latest version, or ``version_id``."""
        try:
            body: bytes = self._s3.get_object(Bucket=self.bucket, Key=key, **_version(version_id))["Body"].read()
            return body
        except (ClientError, BotoCoreError) as exc:
            raise sort_error(exc) from exc

    def lock(self, key: str, version_id: str | None = None) -> ObjectLock:
        """The retention and legal hold of ``key``'s latest version, or of ``version_id``."""
        retention = self._lock_part(self._s3.get_object_retention, key, version_id).get("Retention", {})
        hold = self._lock_part(self._s3.get_object_legal_hold, key, version_id).get("LegalHold", {})
        until = retention.get("RetainUntilDate")
        return ObjectLock(
            mode=retention.get("Mode"),
            retain_until=until.astimezone(UTC) if until else None,
            legal_hold=hold.get("Status") == "ON",
        )

    def _lock_part(self, call: Callable[..., dict[str, Any]], key: str, version_id: str | None) -> dict[str, Any]:
        try:
            return call(Bucket=self.bucket, Key=key, **_version(version_id))
        except ClientError as exc:
            # S3's answer for a version that never had a retention (or a legal hold): none, not a failure.
            if exc.response.get("Error", {}).get("Code") == "NoSuchObjectLockConfiguration":
                return {}
            raise sort_error(exc) from exc
        except BotoCoreError as exc:
            raise sort_error(exc) from exc

    def set_legal_hold(self, key: str, on: bool, version_id: str | None = None) -> None:
        """Put a legal hold on ``key``'s latest version (or ``version_id``), or lift it: while on, no
        one deletes that version."""
        version = {"VersionId": version_id} if version_id else {}
        try:
            self._s3.put_object_legal_hold(
                Bucket=self.bucket, Key=key, LegalHold={"Status": "ON" if on else "OFF"}, **version
            )
        except (ClientError, BotoCoreError) as exc:
            raise sort_error(exc) from exc

    def lock_enabled(self) -> bool:
        """Whether the bucket has Object Lock enabled (S3 never turns it off once on)."""
        try:
            config = self._s3.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ObjectLockConfigurationNotFoundError":
                return False
            raise sort_error(exc) from exc
        except BotoCoreError as exc:
            raise sort_error(exc) from exc
        return bool(config.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled")
