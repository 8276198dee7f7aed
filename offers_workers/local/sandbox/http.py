"""Small threaded HTTP/1.1 keep-alive server shared by the Stripe, Sift and Plaid sandboxes."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from offers_workers.local.sandbox.faults import FAULTS_PATH, FaultState

#: Where the sandbox's own control endpoints live on each partner's port.
CONTROL_PREFIX = "/__sandbox/"

log = logging.getLogger(__name__)


class ConnectionTracking:
    """Mixin for socketserver servers: remembers open connections so ``stop`` can cut keep-alives."""

    def _track_init(self) -> None:
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)  # type: ignore[misc]

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)  # type: ignore[misc]

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class PartnerHTTPServer(ConnectionTracking, ThreadingHTTPServer):
    daemon_threads = True
    # Several worker processes open many connections at once; the default backlog of 5 drops SYNs.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], handler: type[PartnerHandler], faults: FaultState, state: Any) -> None:
        self._track_init()
        self.faults = faults
        self.state = state
        super().__init__(address, handler)


class PartnerHandler(BaseHTTPRequestHandler):
    """Routes control calls, applies faults, and answers each response in one write."""

    protocol_version = "HTTP/1.1"
    server: PartnerHTTPServer
    #: When the request's own time (reading and answering it, less the injected latency) would have
    #: started had there been no latency; None once its answer is timed.
    _timed_from: float | None = None

    def setup(self) -> None:
        super().setup()
        # With keep-alive, Nagle + delayed ACK stalls every small response by ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- partner hooks ---------------------------------------------------------------------------

    def handle_partner(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> None:
        raise NotImplementedError

    def fault_response(self, status: int) -> tuple[Any, dict[str, str]]:
        """The partner's own error body (JSON-able) and extra headers for an injected ``status``."""
        raise NotImplementedError

    def sandbox_control(self, path: str, method: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """A partner's own control endpoint under ``/__sandbox/`` (HTTP status, JSON body); none by default."""
        return 404, {"error": f"no sandbox control at {path}"}

    # -- plumbing --------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        started = time.perf_counter()
        url = urlsplit(self.path)
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        if url.path == FAULTS_PATH:
            status, payload = self.server.faults.control(method, body)
            self.send_json(status, payload)
            return
        if url.path.startswith(CONTROL_PREFIX):  # never faulted: a drill must be able to steer a failing partner
            status, payload = self.sandbox_control(url.path, method, body)
            self.send_json(status, payload)
            return
        before = time.perf_counter() - started
        injected = self.server.faults.apply()
        self._timed_from = time.perf_counter() - before  # the injected latency is not the sandbox's own time
        if injected is not None:
            payload, headers = self.fault_response(injected)
            self.send_json(injected, payload, headers)
            return
        try:
            self.handle_partner(method, url.path, parse_qs(url.query, keep_blank_values=True), body)
        except Exception:
            log.exception("sandbox %s handler failed on %s %s", type(self).__name__, method, url.path)
            payload, headers = self.fault_response(500)
            self.send_json(500, payload, headers)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.respond(status, json.dumps(payload).encode(), headers)

    def respond(
        self, status: int, body: bytes, headers: dict[str, str] | None = None, content_type: str = "application/json"
    ) -> None:
        """Status line, headers and body in ONE write (see the Nagle note in ``setup``)."""
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        lines = [
            f"HTTP/1.1 {status} {reason}",
            f"Date: {formatdate(usegmt=True)}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if self.close_connection:
            lines.append("Connection: close")
        if self._timed_from is not None:
            # Timed before the answer leaves: a caller that reads the counts next finds it counted.
            self.server.faults.answered(time.perf_counter() - self._timed_from)
            self._timed_from = None
        try:
            self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        except OSError:  # the client gave up (timeout) or went away
            self.close_connection = True
