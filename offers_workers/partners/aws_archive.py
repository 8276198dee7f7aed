"""AWS S3: the audit archive (Glacier storage classes), written once a night and restored to verify."""

from __future__ import annotations

import base64
import time
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from config.settings import Settings
from offers_workers.partners.aws_events import client_kwargs, sort_error
from offers_workers.partners.interfaces import (
    NEEDS_RESTORE,
    ArchivedObject,
    ObjectVersion,
    RestoreInProgress,
    StoredObject,
)

__all__ = ["NEEDS_RESTORE", "AuditArchive", "RestoreInProgress"]


def _stored(key: str, response: dict[str, Any]) -> StoredObject:
    return StoredObject(key, response.get("VersionId"), response.get("ChecksumSHA256"))


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

    def _encryption(self) -> dict[str, str]:
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {"ServerSideEncryption": "AES256"}

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
            )
        except (ClientError, BotoCoreError) as exc:
            raise sort_error(exc) from exc
        return _stored(key, response)

    def put_manifest(self, key: str, body: bytes) -> StoredObject:
        """Upload a manifest in the standard class: readable without a restore."""
        # The manifest stays readable without a restore: it is what a restore is checked against.
        try:
            response = self._s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType="application/json",
                ChecksumAlgorithm="SHA256",
                **self._encryption(),
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

    def read(self, key: str) -> bytes:
        """The whole body of a small object (a manifest)."""
        try:
            body: bytes = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return body
        except (ClientError, BotoCoreError) as exc:
            raise sort_error(exc) from exc
