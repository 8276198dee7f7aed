"""Who may reach ``/metrics`` (issue 32): TLS and basic auth from the settings, and the start-up
refusals of what would leak: an address off loopback in plain HTTP unless OFFERS_METRICS_ALLOW_PLAINTEXT
says the network is private, and a password in the clear off loopback whatever that says.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.settings import Settings, env_name

#: What a scrape without the right credentials is told (RFC 7617).
REALM = 'Basic realm="offers-workers metrics"'

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class GuardError(Exception):
    """The endpoint's settings cannot be served as they are; one line naming the setting, never its value."""


@dataclass(frozen=True)
class Guard:
    tls: ssl.SSLContext | None
    #: sha256 of USER:PASSWORD: compared at a fixed length, and the password itself is not kept here.
    credentials_digest: bytes | None

    def wrap(self, app: WSGIApp) -> WSGIApp:
        return app if self.credentials_digest is None else BasicAuth(app, self.credentials_digest)


def guard(settings: Settings, host: str) -> Guard:
    """The TLS context and credentials for serving on ``host``, or GuardError saying what is refused."""
    tls = tls_context(settings)
    auth = settings.metrics_basic_auth
    if not is_loopback(host):
        if auth is not None and tls is None:
            raise GuardError(
                "OFFERS_METRICS_BASIC_AUTH off loopback needs OFFERS_METRICS_TLS_CERT_FILE and"
                " OFFERS_METRICS_TLS_KEY_FILE: the password would cross the network in the clear"
            )
        if tls is None and not settings.metrics_allow_plaintext:
            raise GuardError(
                "--host is not a loopback address: set OFFERS_METRICS_TLS_CERT_FILE and OFFERS_METRICS_TLS_KEY_FILE,"
                " or OFFERS_METRICS_ALLOW_PLAINTEXT=1 on a private network"
            )
        if tls is not None and auth is None and settings.metrics_tls_client_ca_file is None:
            # Encrypted, but anyone who reaches the port may scrape: allowed (a firewall may be the gate), said.
            log.warning(
                "metrics: served off loopback to any client; OFFERS_METRICS_BASIC_AUTH or"
                " OFFERS_METRICS_TLS_CLIENT_CA_FILE would say who may scrape"
            )
    digest = hashlib.sha256(auth.get_secret_value().encode()).digest() if auth is not None else None
    return Guard(tls, digest)


def is_loopback(host: str) -> bool:
    """Every address ``host`` names is a loopback one ('' and 0.0.0.0, every interface, are not)."""
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP) if host else []
    except (socket.gaierror, UnicodeError):
        return False
    return bool(found) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in found)


def _readable(settings: Settings, name: str) -> Path | None:
    path: Path | None = getattr(settings, name)
    if path is not None:
        try:
            path.read_bytes()
        except OSError as exc:
            raise GuardError(f"{env_name(name)}: cannot read the file ({exc.strerror})") from None
    return path


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A server context (TLS 1.2 and later) from the settings' PEM files, or None without them."""
    cert, key = _readable(settings, "metrics_tls_cert_file"), _readable(settings, "metrics_tls_key_file")
    client_ca = _readable(settings, "metrics_tls_client_ca_file")
    if cert is None or key is None:
        return None  # the settings' own check has made sure both or neither are set
    if b"-----BEGIN CERTIFICATE-----" not in cert.read_bytes():
        raise GuardError("OFFERS_METRICS_TLS_CERT_FILE holds no PEM certificate")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # An encrypted key gets an empty password (and fails) rather than a prompt on a terminal nobody watches.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError:
        raise GuardError(
            "OFFERS_METRICS_TLS_KEY_FILE is not the unencrypted PEM key of OFFERS_METRICS_TLS_CERT_FILE's certificate"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError:
            raise GuardError("OFFERS_METRICS_TLS_CLIENT_CA_FILE holds no PEM certificate") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class BasicAuth:
    """A WSGI app answering 401 unless the request carries the configured USER:PASSWORD."""

    def __init__(self, app: WSGIApp, credentials_digest: bytes) -> None:
        self.app = app
        self._digest = credentials_digest

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self.allowed(environ.get("HTTP_AUTHORIZATION", "")):
            return self.app(environ, start_response)
        body = b"401 Unauthorized\n"
        start_response(
            "401 Unauthorized",
            [
                ("WWW-Authenticate", REALM),
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]

    def allowed(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        # Digests of equal length: the comparison's time says nothing of the password or its length.
        return hmac.compare_digest(hashlib.sha256(given).digest(), self._digest)
