"""OpenTelemetry traces: one trace per offer, configured only by the standard ``OTEL_*`` variables.

Off unless an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``): then every process that runs tasks (and the CLI) exports
spans over OTLP/HTTP in batches from a background thread, so a collector that is down or slow
costs dropped spans, never an offer or a stage's time.

How an offer's trace holds together:

- ``offers.submit`` continues the W3C ``traceparent`` an upstream put in the message headers (the
  Celery instrumentation reads it), or starts a new trace;
- every stage is sent from inside the previous stage's span, so its run (and each retry, sent from
  the failed run) is a child in the same trace;
- the offer's row keeps the ``traceparent`` of its intake, so the recovery sweep's re-send and a
  ``dlq replay`` days later resume that trace (:func:`resumed`), linked to the sweep or CLI run;
- partner calls are child spans of the stage, through the maintained instrumentations of requests
  (Stripe, Sift), urllib3 (Plaid) and botocore (EventBridge, SNS, S3); psycopg's show the store.

Spans carry ids, stage, attempt, outcome and reason (:func:`annotate`); never an email, IP or secret.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from config.settings import ConfigError

log = logging.getLogger(__name__)

#: The service name when neither ``OTEL_SERVICE_NAME`` nor ``OTEL_RESOURCE_ATTRIBUTES`` gives one.
SERVICE_NAME = "offers-workers"
#: The instrumentations set up, by the names ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` takes.
INSTRUMENTATIONS = ("celery", "requests", "urllib3", "botocore", "psycopg")

_TRACER = trace.get_tracer("offers_workers")
_W3C = TraceContextTextMapPropagator()
_lock = threading.Lock()
_set_up_in: int | None = None  # the pid that set tracing up: a forked child sets up its own


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces: an OTLP endpoint is set and nothing turns them off."""
    if _truthy(environ.get("OTEL_SDK_DISABLED")) or environ.get("OTEL_TRACES_EXPORTER", "").strip() == "none":
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def check(environ: Mapping[str, str] = os.environ) -> None:
    """Refuse, in one line, ``OTEL_*`` values this fleet cannot honour (it exports OTLP over HTTP only)."""
    if not wanted(environ):
        return
    exporter = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip() or "otlp"
    if exporter != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER={exporter!r}: this fleet exports traces with 'otlp' (or 'none')")
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(name, "").strip()
        if protocol and protocol != "http/protobuf":
            raise ConfigError(f"{name}={protocol!r}: this fleet exports OTLP over HTTP only ('http/protobuf')")
        if protocol:
            break


def setup(process: str) -> bool:
    """Export this process's spans when the ``OTEL_*`` variables ask for it; True when on.

    ``process`` names the process in the resource (``offers.process``: prefork, threads, cli…).
    Safe to call again: once per process (a forked child sets up its own exporter thread).
    """
    global _set_up_in
    if not wanted():
        return False
    check()
    with _lock:
        if _set_up_in == os.getpid():
            return True
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create({"offers.process": process, "process.pid": os.getpid()})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        # The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on); the batch
        # sizes and delay from OTEL_BSP_*.
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(_partner_names(_partner_bases()))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _instrument(provider)
        _set_up_in = os.getpid()
    log.info("tracing on", extra={"service": resource.attributes.get("service.name"), "process_kind": process})
    return True


def _partner_bases() -> dict[str, str]:
    """Base URL by partner, from the settings (none when they are not valid: a CLI run may be so)."""
    from config.settings import get_settings
    from offers_workers.partners.table import PARTNERS

    try:
        settings = get_settings()
    except ConfigError:
        return {}
    found = {p.name: getattr(settings, p.url_setting, None) for p in PARTNERS}
    return {name: url.rstrip("/") for name, url in found.items() if isinstance(url, str) and url}


def _partner_names(bases: dict[str, str]) -> Any:
    """A span processor naming an HTTP client span by the partner it calls ("stripe POST", not
    "POST") and setting ``peer.service``, so a trace reads at a glance; boto3's spans name their
    service already. (Built here: the SDK is imported only when tracing is on.)"""
    from opentelemetry.sdk.trace import SpanProcessor

    class PartnerNames(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            attributes = span.attributes or {}
            url = str(attributes.get("http.url") or attributes.get("url.full") or "")
            for partner, base in bases.items():
                if url and url.startswith(base):
                    span.update_name(f"{partner} {span.name}")
                    span.set_attribute("peer.service", partner)
                    return

    return PartnerNames()


def _instrument(provider: Any) -> None:
    disabled = {n.strip() for n in os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    if "celery" not in disabled:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument(tracer_provider=provider)
    if "requests" not in disabled:
        from opentelemetry.instrumentation.requests import RequestsInstrumentor

        RequestsInstrumentor().instrument(tracer_provider=provider)
    if "urllib3" not in disabled:
        from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

        URLLib3Instrumentor().instrument(tracer_provider=provider)
    if "botocore" not in disabled:
        from opentelemetry.instrumentation.botocore import BotocoreInstrumentor

        BotocoreInstrumentor().instrument(tracer_provider=provider)
    if "psycopg" not in disabled:
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

        PsycopgInstrumentor().instrument(tracer_provider=provider)


def flush(timeout_s: float = 5.0) -> None:
    """Send what is batched now (a worker shutting down, a CLI command ending)."""
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is not None:
        force_flush(int(timeout_s * 1000))


# -- the offer's trace ---------------------------------------------------------------------------


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the span running now (stored with the offer), None when untraced."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent")


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id in a ``traceparent`` (``00-<trace id>-<span id>-<flags>``), None if it has none."""
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def log_fields() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the span running now, for a log line; empty when untraced."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}


def annotate(**attributes: str | int | float | bool | None) -> None:
    """Set ``offer.<name>`` attributes on the span running now (ids, stage, attempt, outcome, reason)."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attributes({f"offer.{name}": value for name, value in attributes.items() if value is not None})


@contextmanager
def resumed(traceparent: str | None, name: str, **attributes: str | int | None) -> Iterator[None]:
    """A span in the offer's own trace (from its stored ``traceparent``), linked to the span running
    now (the sweep's, the CLI's); messages sent inside it continue the offer's trace."""
    if traceparent is None or not _on():
        yield
        return
    parent = _W3C.extract({"traceparent": traceparent})
    current = trace.get_current_span().get_span_context()
    links = [trace.Link(current)] if current.is_valid else None
    with _TRACER.start_as_current_span(
        name,
        context=parent,
        links=links,
        kind=trace.SpanKind.PRODUCER,
        attributes={f"offer.{k}": v for k, v in attributes.items() if v is not None},
    ):
        yield


#: A call made for several offers at once (see ``batch``): its span, which each offer's own links to.
Batch = trace.SpanContext


@contextmanager
def batch(name: str, size: int) -> Iterator[Batch | None]:
    """A partner call carrying several offers' entries (``partners.aws_events``): a span of its own,
    in a trace of its own since it belongs to no one offer, under which the instrumentation's spans
    of the call sit. Each offer's trace shows its part with ``batched``, linked here."""
    if not _on():
        yield None
        return
    with _TRACER.start_as_current_span(
        name, context=Context(), kind=trace.SpanKind.INTERNAL, attributes={"messaging.batch.message_count": size}
    ) as span:
        yield span.get_span_context()


def batched(batch: Batch | None, service: str, method: str, start_ns: int, end_ns: int) -> None:
    """In the offer's trace (the span running now): the client span of an AWS call that carried its
    entry with others, from when the call went out to its answer, linked to the batch's span."""
    if batch is None or not _on() or not start_ns or not end_ns:
        return
    span = _TRACER.start_span(
        f"{service}.{method}",
        kind=trace.SpanKind.CLIENT,
        start_time=start_ns,
        links=[trace.Link(batch)],
        attributes={"rpc.system": "aws-api", "rpc.service": service, "rpc.method": method, "offer.batched": True},
    )
    span.end(end_time=end_ns)


@contextmanager
def operation(name: str) -> Iterator[None]:
    """A span of its own for an operator's command: what it resumes of an offer's trace links back here."""
    if not _on():
        yield
        return
    with _TRACER.start_as_current_span(name, kind=trace.SpanKind.INTERNAL):
        yield


def _on() -> bool:
    return _set_up_in == os.getpid()
