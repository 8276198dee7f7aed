"""Prometheus ``/metrics`` (the Procfile's ``metrics:`` process): the figures of ``stats``, read
from Postgres and the broker at each scrape, plus partner errors counted fleet-wide in Redis.

A Datadog agent scrapes it with its OpenMetrics check (``openmetrics_endpoint: http://host:port/metrics``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from offers_workers.runtime import Runtime

log = logging.getLogger(__name__)

#: Figures cover offers received in this window (as `stats --window 1h`).
WINDOW = timedelta(hours=1)


def partner_errors_key(prefix: str) -> str:
    return f"{prefix}metrics:partner_errors"


def count_partner_error(rt: Runtime, partner: str, code: str) -> None:
    """Best effort: a metrics counter must never fail a task."""
    try:
        if rt.redis is not None:
            rt.redis.hincrby(partner_errors_key(rt.settings.redis_key_prefix), f"{partner}|{code}", 1)
    except Exception:
        log.debug("partner error not counted", exc_info=True)


class OffersCollector:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        from offers_workers.ops.health import figures

        found = figures(self.rt, WINDOW)
        states = GaugeMetricFamily(
            "offers_by_state", "Offers received in the last hour, by state and reason", labels=["state", "reason"]
        )
        for row in found.offers_by_state:
            states.add_metric([row.state, row.reason or ""], row.offers)
        yield states
        if found.success_rate is not None:
            yield GaugeMetricFamily(
                "offers_submission_success_rate",
                "Share of finished offers that finished as designed (last hour)",
                value=found.success_rate,
            )
        for name, what, latency in (
            ("offers_validation_seconds", "validation", found.validation_ms),
            ("offers_auction_lag_seconds", "auction_lag", found.auction_lag_ms),
        ):
            gauge = GaugeMetricFamily(name, f"{what} latency percentiles over the last hour", labels=["quantile"])
            for quantile, ms in (("0.50", latency.p50), ("0.95", latency.p95), ("0.99", latency.p99)):
                if ms is not None:
                    gauge.add_metric([quantile], ms / 1000)
            yield gauge
        dlq = GaugeMetricFamily("offers_dead_letters", "Pending dead letters by stage", labels=["stage"])
        for stage, n in found.dead_letters.items():
            dlq.add_metric([stage], n)
        yield dlq
        yield GaugeMetricFamily("offers_active_holds", "Card authorizations held", value=found.active_holds.holds)
        yield GaugeMetricFamily(
            "offers_stuck", "Open offers with no progress past the recovery threshold", value=found.stuck_offers
        )
        cancelled = GaugeMetricFamily(
            "offers_cancellations", "Cancellations in the last hour by reason", labels=["reason"]
        )
        for cancelled_for in found.cancellations.by_reason:
            cancelled.add_metric([cancelled_for.reason or ""], cancelled_for.offers)
        yield cancelled
        yield GaugeMetricFamily(
            "offers_high_value_cancellation_spike",
            "1 while high-value cancellations spike",
            value=int(found.high_value_cancellations.spike),
        )
        if found.queue_depths is not None:
            queues = GaugeMetricFamily("offers_queue_depth", "Messages waiting per queue", labels=["queue"])
            for queue, n in found.queue_depths.items():
                queues.add_metric([queue], n)
            yield queues
        yield self._partner_errors()

    def _partner_errors(self) -> Metric:
        errors = CounterMetricFamily(
            "offers_partner_errors", "Partner call failures seen by the fleet", labels=["partner", "code"]
        )
        counts: dict[Any, Any] = (
            self.rt.redis.hgetall(partner_errors_key(self.rt.settings.redis_key_prefix)) if self.rt.redis else {}
        )
        for field, n in counts.items():
            partner, _, code = field.decode().partition("|")
            errors.add_metric([partner, code], int(n))
        return errors


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: " + format, *args)


def serve(rt: Runtime, host: str, port: int) -> None:
    registry = CollectorRegistry()
    registry.register(OffersCollector(rt))
    with make_server(host, port, make_wsgi_app(registry), handler_class=_QuietHandler) as server:
        log.info("serving /metrics", extra={"host": host, "port": server.server_port})
        server.serve_forever()
