"""AWS S3: the audit archive (Glacier storage classes), written once a night and restored to verify."""

from __future__ import annotations

import base64
import time
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from config.settings import Settings
from offers_workers.partners.aws_events import sort_error

#: Storage classes whose objects must be restored before they can be read.
NEEDS_RESTORE = {"GLACIER", "DEEP_ARCHIVE"}


class RestoreInProgress(Exception):
    """An archived object's restore is requested and not finished yet (Glacier Standard: hours)."""

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(f"the restore of s3://{bucket}/{key} is requested and still in progress")
        self.bucket = bucket
        self.key = key


class AuditArchive:
    def __init__(self, settings: Settings) -> None:
        if not settings.audit_bucket:
            raise ValueError("OFFERS_AUDIT_BUCKET is not set")
        # A nightly batch, not a saga step: let the SDK retry S3's 5xx, throttling and resets itself.
        config = Config(
            connect_timeout=settings.partner_connect_timeout,
            read_timeout=max(settings.partner_read_timeout, 30),
            retries={"max_attempts": 5, "mode": "standard"},
        )
        kwargs: dict[str, Any] = {"region_name": settings.aws_region, "config": config}
        if settings.aws_endpoint_url:  # a VPC or FIPS endpoint, or the sandbox's moto
            kwargs["endpoint_url"] = settings.aws_endpoint_url
        if settings.sandbox:  # moto takes any credentials; a real endpoint takes boto3's usual chain
            kwargs.update(aws_access_key_id="testing", aws_secret_access_key="testing")
        self._s3 = boto3.client("s3", **kwargs)
        self.bucket = settings.audit_bucket
        self.storage_class = settings.audit_storage_class
        self.kms_key_id = settings.audit_kms_key_id

    def _encryption(self) -> dict[str, str]:
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {"ServerSideEncryption": "AES256"}

    def put_export(self, key: str, body: IO[bytes], sha256_hex: str, metadata: dict[str, str]) -> dict[str, Any]:
        """Upload one export; S3 checks the SHA-256 we computed while writing it."""
        try:
            return self._s3.put_object(
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

    def put_manifest(self, key: str, body: bytes) -> None:
        # The manifest stays readable without a restore: it is what a restore is checked against.
        try:
            self._s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType="application/json",
                ChecksumAlgorithm="SHA256",
                **self._encryption(),
            )
        except (ClientError, BotoCoreError) as exc:
            raise sort_error(exc) from exc

    def head(self, key: str) -> dict[str, Any]:
        try:
            return self._s3.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except (ClientError, BotoCoreError) as exc:
            raise sort_error(exc) from exc

    def versions(self, key: str) -> list[dict[str, Any]]:
        try:
            listed = self._s3.list_object_versions(Bucket=self.bucket, Prefix=key)
        except (ClientError, BotoCoreError) as exc:
            raise sort_error(exc) from exc
        return [v for v in listed.get("Versions", []) if v["Key"] == key]

    def restore(
        self, key: str, *, days: int = 1, tier: str = "Standard", timeout_s: float = 600, poll_s: float = 1
    ) -> None:
        """Ask for a restore of an archived object and wait until it is readable.

        Raises RestoreInProgress when it is not readable within ``timeout_s``, or at once when an
        earlier request is still running: the caller comes back later, the request stands.
        """
        head = self.head(key)
        if head.get("StorageClass") not in NEEDS_RESTORE:
            return
        restore_state = head.get("Restore", "")
        if 'ongoing-request="false"' in restore_state:
            return
        if 'ongoing-request="true"' in restore_state:
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
        while 'ongoing-request="false"' not in self.head(key).get("Restore", ""):
            if time.monotonic() > deadline:
                raise RestoreInProgress(self.bucket, key)
            time.sleep(poll_s)

    def download(self, key: str, into: IO[bytes]) -> None:
        try:
            self._s3.download_fileobj(self.bucket, key, into)
        except (ClientError, BotoCoreError) as exc:
            raise sort_error(exc) from exc

    def read(self, key: str) -> bytes:
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise sort_error(exc) from exc
