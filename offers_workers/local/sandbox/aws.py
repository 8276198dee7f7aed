"""AWS sandbox: moto's WSGI app in a werkzeug server, behind a fault-injecting middleware.

``ensure_aws_resources`` creates the EventBridge bus, SNS topics and S3 bucket the settings name.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode
from xml.etree import ElementTree
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


#: A lock read's query parameter -> the HEAD headers it reads, and the element and fields S3 answers them in.
_LOCK_READS: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
    "retention": (
        ("x-amz-object-lock-mode", "x-amz-object-lock-retain-until-date"),
        "Retention",
        ("Mode", "RetainUntilDate"),
    ),
    "legal-hold": (("x-amz-object-lock-legal-hold",), "LegalHold", ("Status",)),
}

#: status, S3 error code, message: what S3 answers a request Object Lock forbids.
_Refusal = tuple[int, str, str]
_ACCESS_DENIED: _Refusal = (403, "AccessDenied", "Access Denied")
_MALFORMED_XML: _Refusal = (
    400,
    "MalformedXML",
    "The XML you provided was not well-formed or did not validate against our published schema",
)
_LOCKED_VERSIONING: _Refusal = (
    409,
    "InvalidBucketState",
    "An Object Lock configuration is present on this bucket, so the versioning state cannot be changed.",
)


class ObjectLockGuard:
    """S3 Object Lock where moto (5.2) lacks it or gets it wrong, in front of moto's S3.

    - GetObjectRetention and GetObjectLegalHold: moto has no GetObjectRetention (it answers with the
      object itself), and its GetObjectLegalHold refuses Glacier objects and answers an empty status
      for a version without a legal hold. Both are answered here as S3 answers them.
    - PutObjectRetention: moto sets whatever it is sent. S3 refuses (403 AccessDenied) anything but
      keeping or extending a retention in force in the same mode: always in COMPLIANCE mode, whatever
      ``x-amz-bypass-governance-retention`` says, and in GOVERNANCE mode unless that header is true.
    - PutBucketVersioning: moto suspends versioning on an Object Lock bucket (a plain delete then
      removes every version, locked or not); S3 refuses to (409 InvalidBucketState).

    The version's lock and the bucket's are read from moto's own answers (a HEAD of the version, the
    bucket's GetObjectLockConfiguration). Whatever those refuse (no such key, version or bucket), and
    whatever Object Lock allows, goes to moto as sent.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if "/s3/aws4_request" not in environ.get("HTTP_AUTHORIZATION", ""):
            return self.app(environ, start_response)
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        method = environ["REQUEST_METHOD"]
        refusal: _Refusal | None = None
        if method == "GET":
            read = next((name for name in _LOCK_READS if name in query), None)
            if read is not None:
                answer = self._read(environ, query, read, start_response)
                if answer is not None:
                    return answer
        elif method == "PUT" and "retention" in query:
            refusal = self._check_retention(environ, query)
        elif method == "PUT" and "versioning" in query:
            refusal = self._check_versioning(environ)
        if refusal is not None:
            return _s3_error(start_response, *refusal)
        return self.app(environ, start_response)

    def _read(
        self, environ: dict[str, Any], query: dict[str, list[str]], read: str, start_response: StartResponse
    ) -> Iterable[bytes] | None:
        status, headers, _ = self._ask(environ, "HEAD", _version_query(query))
        if status != 200:
            return None
        names, element, fields = _LOCK_READS[read]
        values = [headers.get(name) for name in names]
        if not all(values):
            # S3's answer for a version that never had a retention (or a legal hold).
            message = "The specified object does not have a ObjectLock configuration"
            return _s3_error(start_response, 404, "NoSuchObjectLockConfiguration", message)
        inner = "".join(f"<{f}>{escape(str(v))}</{f}>" for f, v in zip(fields, values, strict=True))
        xmlns = "http://s3.amazonaws.com/doc/2006-03-01/"
        body = f'<?xml version="1.0" encoding="UTF-8"?><{element} xmlns="{xmlns}">{inner}</{element}>'.encode()
        return _respond(start_response, 200, body, "application/xml")

    def _check_retention(self, environ: dict[str, Any], query: dict[str, list[str]]) -> _Refusal | None:
        body = _take_body(environ)
        status, headers, _ = self._ask(environ, "HEAD", _version_query(query))
        mode, until = headers.get("x-amz-object-lock-mode"), headers.get("x-amz-object-lock-retain-until-date")
        if status != 200 or not mode or not until or _instant(until) <= datetime.now(UTC):
            return None  # no retention in force: anything goes
        try:
            fields = _xml_fields(body)
            wanted = fields.get("RetainUntilDate")
            new_until = _instant(wanted) if wanted else None
        except (ElementTree.ParseError, ValueError):
            return _MALFORMED_XML
        if fields.get("Mode") == mode and new_until is not None and new_until >= _instant(until):
            return None  # kept or extended, in the same mode
        bypass = environ.get("HTTP_X_AMZ_BYPASS_GOVERNANCE_RETENTION", "").lower() == "true"
        return None if mode == "GOVERNANCE" and bypass else _ACCESS_DENIED

    def _check_versioning(self, environ: dict[str, Any]) -> _Refusal | None:
        try:
            suspend = _xml_fields(_take_body(environ)).get("Status") == "Suspended"
        except ElementTree.ParseError:
            return None  # moto answers it
        if not suspend:
            return None  # Enabled: what an Object Lock bucket already is
        status, _, answer = self._ask(environ, "GET", "object-lock")
        locked = status == 200 and _xml_fields(answer).get("ObjectLockEnabled") == "Enabled"
        return _LOCKED_VERSIONING if locked else None

    def _ask(self, environ: dict[str, Any], method: str, query: str) -> tuple[int, dict[str, str], bytes]:
        """moto's answer to ``method`` on the request's own bucket or key, with ``query`` and no body."""
        request = {**environ, "REQUEST_METHOD": method, "QUERY_STRING": query}
        request.update({"CONTENT_LENGTH": "0", "wsgi.input": io.BytesIO()})
        answered: dict[str, Any] = {}

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            answered["status"], answered["headers"] = int(status.split()[0]), {k.lower(): v for k, v in headers}
            return lambda _: None

        result = self.app(request, start)
        try:
            body = b"".join(result)  # read whole, so moto finishes the request
        finally:
            if hasattr(result, "close"):
                result.close()
        return answered["status"], answered["headers"], body


def _version_query(query: dict[str, list[str]]) -> str:
    return urlencode({"versionId": query["versionId"][0]} if "versionId" in query else {})


def _take_body(environ: dict[str, Any]) -> bytes:
    """The request's body, left in ``environ`` for moto to read again."""
    body = _read_body(environ)
    environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
    return body


def _xml_fields(body: bytes) -> dict[str, str]:
    """Each element's text by its name, without namespace (S3's request and answer bodies are flat enough)."""
    root = ElementTree.fromstring(body)
    return {element.tag.rpartition("}")[2]: (element.text or "").strip() for element in root.iter()}


def _instant(text: str) -> datetime:
    """An S3 timestamp (ISO 8601, ``Z`` for UTC), as an aware datetime."""
    instant = datetime.fromisoformat(text)
    return instant if instant.tzinfo else instant.replace(tzinfo=UTC)


def _s3_error(start_response: StartResponse, status: int, code: str, message: str) -> list[bytes]:
    error = f"<Code>{code}</Code><Message>{escape(message)}</Message><RequestId>{secrets.token_hex(8)}</RequestId>"
    body = f'<?xml version="1.0" encoding="UTF-8"?><Error>{error}</Error>'.encode()
    return _respond(start_response, status, body, "application/xml")


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

    app = FaultMiddleware(ObjectLockGuard(Dispatcher(create_backend_app)), faults)
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
        # Object Lock keeps every version (it turns versioning on) and lets each write lock its own:
        # a rewrite of an export shows up as a new version, never replaces or deletes one.
        kwargs: dict[str, Any] = {"Bucket": settings.audit_bucket, "ObjectLockEnabledForBucket": True}
        if settings.aws_region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": settings.aws_region}
        try:
            s3.create_bucket(**kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
