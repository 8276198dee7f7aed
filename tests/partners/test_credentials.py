"""AWS credentials: a deployment with an endpoint signs with boto3's standard chain, the sandbox with its own.

A small HTTP server stands in for the endpoint (a VPC interface or FIPS endpoint in production) and
records each request's ``Authorization`` header: what AWS would check.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from config.settings import SANDBOX_AWS_CREDENTIALS, Settings
from offers_workers.partners.aws_archive import AuditArchive
from offers_workers.partners.aws_events import EventPublisher

SNS_PUBLISHED = (
    b'<PublishBatchResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
    b"<PublishBatchResult><Successful><member><Id>0</Id><MessageId>m-1</MessageId></member></Successful>"
    b"<Failed/></PublishBatchResult>"
    b"<ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata></PublishBatchResponse>"
)


class EndpointServer(ThreadingHTTPServer):
    """A private AWS endpoint (a VPC interface or FIPS endpoint, say) that keeps what each request signed with."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Endpoint)
        self.authorizations: list[str] = []


class Endpoint(BaseHTTPRequestHandler):
    """Answers EventBridge PutEvents, SNS PublishBatch and S3 PutObject as AWS would, minimally."""

    server: EndpointServer

    def do_POST(self) -> None:
        self._record()
        if self.headers.get("X-Amz-Target", "").startswith("AWSEvents."):
            self._send(b'{"FailedEntryCount": 0, "Entries": [{"EventId": "e-1"}]}', "application/x-amz-json-1.1")
        else:  # SNS's query protocol
            self._send(SNS_PUBLISHED, "text/xml")

    def do_PUT(self) -> None:
        self._record()
        self._send(b"", "application/xml", extra={"ETag": '"0"'})

    def _record(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.authorizations.append(self.headers.get("Authorization", ""))

    def _send(self, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[str]]]:
    server = EndpointServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.authorizations
    server.shutdown()
    server.server_close()


@pytest.fixture
def chain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The standard chain's credentials in env vars, and nothing in the shared files to fall back on."""
    empty = tmp_path / "empty"
    empty.write_text("")
    for name in (
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMTHECHAIN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-the-chain")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    return "AKIAFROMTHECHAIN"


def production(endpoint_url: str) -> Settings:
    """A deployment's settings: no sandbox, every required setting given, an AWS endpoint set."""
    return Settings(
        sandbox=False,
        stripe_api_key="sk_live_x",
        sift_api_key="sift-key",
        sift_account_id="acct",
        plaid_client_id="client",
        plaid_secret="secret",
        sns_submitted_topic_arn="arn:aws:sns:us-east-1:123456789012:offers-submitted",
        sns_cancelled_topic_arn="arn:aws:sns:us-east-1:123456789012:offers-cancelled",
        audit_bucket="offers-audit",
        message_keys="fleet-1=" + "k" * 40,
        payment_secret_keys="pay-1=" + "s" * 40,
        aws_endpoint_url=endpoint_url,
    )


def publish_and_archive(settings: Settings) -> None:
    EventPublisher(settings).publish(
        event_id="e-1", detail_type="offer.submitted", detail={}, sns_topic_arn=settings.sns_submitted_topic_arn
    )
    AuditArchive(settings).put_manifest("manifests/1.json", b"{}")
    assert AuditArchive(settings).put_export("exports/1.gz", io.BytesIO(b""), "0" * 64, {}).key == "exports/1.gz"


def test_a_deployment_with_an_endpoint_signs_with_the_standard_chain(
    endpoint: tuple[str, list[str]], chain: str
) -> None:
    # Given production settings with an AWS endpoint, and credentials only in the standard chain
    url, authorizations = endpoint
    # When the fleet publishes an event (EventBridge, then SNS) and archives (S3)
    publish_and_archive(production(url))
    # Then every request is signed with the chain's access key, none with the sandbox's
    assert len(authorizations) == 4
    assert all(f"Credential={chain}/" in a for a in authorizations), authorizations
    assert not any(f"Credential={SANDBOX_AWS_CREDENTIALS[0]}/" in a for a in authorizations)


def test_the_sandbox_signs_with_its_own_keys_whatever_the_chain_holds(
    endpoint: tuple[str, list[str]], chain: str
) -> None:
    # Given sandbox settings in an environment that also holds real credentials
    url, authorizations = endpoint
    sandbox = production(url).model_copy(update={"sandbox": True})
    # When the same calls go to the sandbox's endpoint
    publish_and_archive(sandbox)
    # Then they carry the sandbox's test keys: real keys never leave for a local moto
    assert len(authorizations) == 4
    assert all(f"Credential={SANDBOX_AWS_CREDENTIALS[0]}/" in a for a in authorizations), authorizations
