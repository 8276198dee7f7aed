"""When tracing is on, what a bad OTEL_* value does, and the trace ids kept and logged."""

from __future__ import annotations

import pytest

from config.settings import ConfigError
from offers_workers import tracing
from offers_workers.logs import JsonFormatter

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        (ENDPOINT, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, False),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_SERVICE_NAME": "offers-workers"}, False),
    ],
)
def test_tracing_is_on_only_with_an_endpoint(environ: dict[str, str], on: bool) -> None:
    assert tracing.wanted(environ) is on


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
    ],
)
def test_a_value_the_fleet_cannot_honour_is_refused_by_name(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        tracing.check(environ)


def test_supported_values_pass() -> None:
    tracing.check({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_TRACES_EXPORTER": "otlp"})
    # the traces-specific protocol wins over the general one, as OpenTelemetry reads them
    tracing.check(
        {**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    tracing.check({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})  # off: nothing to refuse


def test_the_trace_id_of_a_traceparent() -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert tracing.trace_id_of(f"00-{trace_id}-00f067aa0ba902b7-01") == trace_id
    assert tracing.trace_id_of(None) is None
    assert tracing.trace_id_of("garbage") is None


def test_untraced_nothing_is_kept_or_logged() -> None:
    import logging

    assert tracing.current_traceparent() is None
    tracing.annotate(id="off_1", stage="payment")  # no span: nothing to do, and no error
    record = logging.makeLogRecord({"msg": "hello", "levelno": logging.INFO, "levelname": "INFO"})
    assert "trace_id" not in JsonFormatter().format(record)


def test_a_span_running_is_kept_and_logged() -> None:
    import json
    import logging

    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("stage") as span:
        context = span.get_span_context()
        traceparent = tracing.current_traceparent()
        record = logging.makeLogRecord({"msg": "hello", "levelno": logging.INFO, "levelname": "INFO"})
        logged = json.loads(JsonFormatter().format(record))
    assert traceparent is not None and traceparent.startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")
    assert (logged["trace_id"], logged["span_id"]) == (f"{context.trace_id:032x}", f"{context.span_id:016x}")


def test_a_worker_with_an_unsupported_otlp_protocol_stops_at_start_up(clean_env: pytest.MonkeyPatch) -> None:
    from tests.unit.test_settings import worker_stops_at_start_up_with

    clean_env.setenv("OFFERS_SANDBOX", "1")
    clean_env.setenv("OFFERS_BROKER_URL", "redis://broker:6379/0")
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    worker_stops_at_start_up_with(
        "offers-workers: OTEL_EXPORTER_OTLP_PROTOCOL='grpc': this fleet exports OTLP over HTTP only ('http/protobuf')"
    )
