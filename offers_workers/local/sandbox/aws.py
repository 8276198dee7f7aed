"""AWS sandbox: moto's WSGI app in a werkzeug server, behind a fault-injecting middleware.

``ensure_aws_resources`` creates the EventBridge bus, SNS topics and S3 bucket the settings name.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from offers_workers.local.sandbox.faults import FAULTS_PATH, FaultState
from offers_workers.local.sandbox.http import ConnectionTracking

if TYPE_CHECKING:
    from config.settings import Settings

MOTO_ACCOUNT_ID = "123456789012"
_DUMMY_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

# status -> error code, per wire protocol (json: EventBridge/SQS, query: SNS, rest-xml: S3)
_CODES: dict[int, dict[str, str]] = {
    429: {"json": "ThrottlingException", "query": "Throttling", "rest-xml": "SlowDown"},
    500: {"json": "InternalFailure", "query": "InternalFailure", "rest-xml": "InternalError"},
    503: {"json": "ServiceUnavailable", "query": "ServiceUnavailable", "rest-xml": "ServiceUnavailable"},
    400: {"json": "ValidationException", "query": "ValidationError", "rest-xml": "InvalidRequest"},
    403: {"json": "AccessDeniedException", "query": "AccessDenied", "rest-xml": "AccessDenied"},
}

StartResponse = Callable[..., Any]


class FaultMiddleware:
    """Serves the fault control endpoint and injects faults in front of moto."""

    def __init__(self, app: Callable[..., Iterable[bytes]], faults: FaultState) -> None:
        self.app = app
        self.faults = faults

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == FAULTS_PATH:
            status, payload = self.faults.control(environ["REQUEST_METHOD"], _read_body(environ))
            return _respond(start_response, status, json.dumps(payload).encode(), "application/json")
        if path.startswith("/moto-api"):
            return self.app(environ, start_response)
        injected = self.faults.apply()
        resumed = time.perf_counter()  # the injected latency is not the sandbox's own time
        if injected is not None:
            _read_body(environ)  # drain it, or the next request on this keep-alive connection is garbage
            answer = self._error(environ, start_response, injected)
        else:
            # Read whole here (moto builds its bodies in memory anyway), so the time covers the answer.
            result = self.app(environ, start_response)
            try:
                answer = list(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
        self.faults.answered(time.perf_counter() - resumed)
        return answer

    @staticmethod
    def _error(environ: dict[str, Any], start_response: StartResponse, status: int) -> Iterable[bytes]:
        request_id = secrets.token_hex(16)
        if environ.get("HTTP_X_AMZ_TARGET"):
            protocol = "json"
        elif environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            protocol = "query"
        else:
            protocol = "rest-xml"
        default = "ThrottlingException" if protocol == "json" and status == 429 else "InternalFailure"
        code = _CODES.get(status, {}).get(protocol, default)
        message = f"sandbox fault: HTTP {status}"
        if protocol == "json":
            body = json.dumps({"__type": code, "message": message}).encode()
            headers = [("x-amzn-ErrorType", code), ("x-amzn-RequestId", request_id)]
            return _respond(start_response, status, body, "application/x-amz-json-1.1", headers)
        if protocol == "query":
            kind = "Sender" if status < 500 else "Receiver"
            xml = (
                f"<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>{escape(message)}</Message>"
                f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
            )
        else:
            error = f"<Code>{code}</Code><Message>{escape(message)}</Message><RequestId>{request_id}</RequestId>"
            xml = f"<Error>{error}</Error>"
        body = ('<?xml version="1.0" encoding="UTF-8"?>' + xml).encode()
        return _respond(start_response, status, body, "text/xml", [("x-amzn-RequestId", request_id)])


def _read_body(environ: dict[str, Any]) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return environ["wsgi.input"].read(length) if length else b""


def _respond(
    start_response: StartResponse,
    status: int,
    body: bytes,
    content_type: str,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    start_response(
        f"{status} {reason}", [("Content-Type", content_type), ("Content-Length", str(len(body))), *(headers or [])]
    )
    return [body]


def make_aws_server(host: str, port: int, faults: FaultState) -> Any:
    """A threaded werkzeug server running moto (all services) behind ``FaultMiddleware``."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import ThreadedWSGIServer

    # werkzeug logs every request at INFO, even when moto is told to be quiet.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    class Handler(MotoRequestHandler):
        def setup(self) -> None:
            super().setup()
            # werkzeug writes headers and body separately: without this, keep-alive stalls ~40 ms.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    class Server(ConnectionTracking, ThreadedWSGIServer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._track_init()
            super().__init__(*args, **kwargs)

    class Dispatcher(DomainDispatcherApplication):
        """moto's dispatcher, remembering which backend serves a host. moto lists its modules on
        disk for every request, under a lock every request shares: the largest cost of the AWS
        sandbox in the benchmark's profile, and one production never pays."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._backends: dict[str | None, Any] = {}

        def get_backend_for_host(self, host: str | None) -> Any:
            if host not in self._backends:
                self._backends[host] = super().get_backend_for_host(host)
            return self._backends[host]

    app = FaultMiddleware(Dispatcher(create_backend_app), faults)
    try:
        return Server(host, port, app, handler=Handler)
    except SystemExit:  # werkzeug prints the bind error and calls sys.exit(1)
        raise OSError(f"cannot listen on {host}:{port} for the AWS sandbox") from None


def _clients(settings: Settings, service: str, region: str | None = None) -> Any:
    import boto3

    return boto3.client(
        service, endpoint_url=settings.aws_endpoint_url, region_name=region or settings.aws_region, **_DUMMY_CREDENTIALS
    )


def ensure_aws_resources(settings: Settings) -> None:
    """Create (idempotently) the bus, topics and bucket ``settings`` name, at its sandbox endpoint."""
    from botocore.exceptions import ClientError

    if not settings.aws_endpoint_url:
        raise ValueError("ensure_aws_resources only works against a sandbox (OFFERS_AWS_ENDPOINT_URL is unset)")
    events = _clients(settings, "events")
    try:
        events.create_event_bus(Name=settings.event_bus_name)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceAlreadyExistsException":
            raise
    for arn in (settings.sns_submitted_topic_arn, settings.sns_cancelled_topic_arn):
        if not arn:
            continue
        parts = arn.split(":")
        if len(parts) != 6 or parts[2] != "sns":
            raise ValueError(f"not an SNS topic ARN: {arn}")
        created = _clients(settings, "sns", region=parts[3]).create_topic(Name=parts[5])["TopicArn"]
        if created != arn:  # e.g. an account other than moto's 123456789012
            raise ValueError(f"sandbox created {created}, not {arn}; use account {MOTO_ACCOUNT_ID}")
    if settings.audit_bucket:
        s3 = _clients(settings, "s3")
        kwargs: dict[str, Any] = {"Bucket": settings.audit_bucket}
        if settings.aws_region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": settings.aws_region}
        try:
            s3.create_bucket(**kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        # An archive bucket keeps every version: a rewrite of an export shows up, never replaces silently.
        s3.put_bucket_versioning(Bucket=settings.audit_bucket, VersioningConfiguration={"Status": "Enabled"})
