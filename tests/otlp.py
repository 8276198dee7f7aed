"""A trace receiver for tests: the bench's OTLP/HTTP sink (``POST /v1/traces``, the protobuf decoded
with ``opentelemetry-proto`` as a collector does), keeping every span it got."""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from offers_workers.local.otlp_sink import OtlpSink

KIND = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    links: list[tuple[str, str]] = field(default_factory=list)
    status: int = 0

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


class Receiver(OtlpSink):
    """``with Receiver() as r:`` serves on a free port of 127.0.0.1; ``r.endpoint`` is what
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes; ``r.kept`` all spans received so far."""

    def __init__(self) -> None:
        self._kept: list[Span] = []
        self._kept_lock = threading.Lock()
        super().__init__(keep=self._add)

    def _add(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    spans.append(
                        Span(
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            name=s.name,
                            kind=KIND.get(s.kind, str(s.kind)),
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            resource=resource,
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                            status=s.status.code,
                        )
                    )
        with self._kept_lock:
            self._kept += spans

    @property
    def kept(self) -> list[Span]:
        with self._kept_lock:
            return list(self._kept)

    def traces(self) -> dict[str, list[Span]]:
        found: dict[str, list[Span]] = defaultdict(list)
        for span in self.kept:
            found[span.trace_id].append(span)
        return dict(found)


def tree(spans: list[Span]) -> str:
    """The trace as an indented tree, children in start order: what the issue note shows."""
    by_parent: dict[str, list[Span]] = defaultdict(list)
    ids = {s.span_id for s in spans}
    for s in spans:
        by_parent[s.parent_id if s.parent_id in ids else ""].append(s)
    start = min(s.start_ns for s in spans)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for s in sorted(by_parent.get(parent, []), key=lambda x: x.start_ns):
            who = s.resource.get("offers.process", "?")
            extra = {
                k.removeprefix("offer."): v
                for k, v in s.attributes.items()
                if k.startswith("offer.") and k != "offer.id"
            }
            detail = " ".join(f"{k}={v}" for k, v in extra.items())
            lines.append(
                f"{'  ' * depth}{s.name:<{max(1, 48 - 2 * depth)}} {who:<8} +{(s.start_ns - start) / 1e6:8.1f} ms"
                f" {s.ms:8.1f} ms  {detail}".rstrip()
            )
            walk(s.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)
