"""A local OTLP/HTTP trace sink: what ``make bench-tracing`` exports to, so the bench measures the
fleet with tracing on without a collector installed.

It answers ``POST /v1/traces`` as a collector does and counts what it got (requests, spans,
bytes); it keeps nothing. ``python -m offers_workers.local.otlp_sink COMMAND...`` runs COMMAND
with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a sink, then prints the counts.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_ANSWER = ExportTraceServiceResponse().SerializeToString()


class OtlpSink:
    """An OTLP/HTTP endpoint on a free loopback port that counts requests, spans and bytes, and
    hands each decoded request to ``keep`` when given (the trace tests keep the spans)."""

    def __init__(self, keep: Callable[[ExportTraceServiceRequest], None] | None = None) -> None:
        self.requests = self.spans = self.bytes = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":  # OTEL_EXPORTER_OTLP_COMPRESSION=gzip
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                count = sum(len(s.spans) for rs in request.resource_spans for s in rs.scope_spans)
                with sink._lock:
                    sink.requests += 1
                    sink.spans += count
                    sink.bytes += len(body)
                if keep is not None:
                    keep(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(_ANSWER)))
                self.end_headers()
                self.wfile.write(_ANSWER)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> OtlpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m offers_workers.local.otlp_sink COMMAND [ARGS...]", file=sys.stderr)
        return 2
    with OtlpSink() as sink:
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint}
        print(f"tracing on: OTLP/HTTP to a local sink at {sink.endpoint}", file=sys.stderr)
        code = subprocess.call(argv, env=env)
        print(
            f"the sink received {sink.spans:,} spans in {sink.requests:,} batches ({sink.bytes / 1e6:.1f} MB)",
            file=sys.stderr,
        )
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
