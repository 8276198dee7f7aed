"""Prometheus ``/metrics`` (the Procfile's ``metrics:`` process): the figures of ``stats``, read
from Postgres and the broker at each scrape, plus partner errors, SNS publish failures and unsent
funnel events counted fleet-wide in Redis (``store.counters``). The alert rules in ``monitoring/alerts.yml`` read these names.

Figures of offers are windowed gauges (the last hour, exact from Postgres, as ``stats`` shows them),
not counters kept by each worker: a fleet on many hosts has one truth, and a restarted worker loses
nothing. Events that Postgres does not keep (partner errors) are counters, for ``rate()``.

A Datadog agent scrapes it with its OpenMetrics check (``openmetrics_endpoint: http://host:port/metrics``).
Off loopback it is served over TLS, with basic auth if set (``metrics_guard``).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from config.celery import QUEUES, celery_config
from offers_workers.ops import reports
from offers_workers.ops.figures import figures
from offers_workers.ops.metrics_guard import Guard
from offers_workers.runtime import Runtime
from offers_workers.store import audit_anchors, counters
from offers_workers.store import reports as store_reports

log = logging.getLogger(__name__)

#: Figures cover offers received in this window (as `stats --window 1h`).
WINDOW = timedelta(hours=1)
#: How often `metrics serve` asks the workers which queues they consume (a broadcast, a second long).
CONSUMERS_REFRESH_S = 15.0
#: Scrapes within this long of one another share one collection (Postgres queries, broker lengths).
COLLECTION_MAX_AGE_S = 1.0
#: A verify run's findings stay on the gauge this long, whatever later runs record (they are
#: append-only rows: a login that may record a clean run cannot make a finding go away sooner).
VERIFY_FINDINGS_WINDOW_S = 24 * 3600


def by_label(name: str, documentation: str, label: str, counts: Mapping[str, float]) -> GaugeMetricFamily:
    """A gauge with one sample per key of ``counts``; with none it still says its name (HELP, TYPE)."""
    gauge = GaugeMetricFamily(name, documentation, labels=[label])
    for key, n in counts.items():
        gauge.add_metric([key], n)
    return gauge


class Consumers:
    """Which queues the workers consume, asked in a thread of its own every ``every_s``: a scrape
    reads the last answer instead of waiting out a broadcast to every worker (a second each)."""

    def __init__(self, app: Any, every_s: float = CONSUMERS_REFRESH_S) -> None:
        self.app = app
        self.every_s = every_s
        self._latest: dict[str, int] = {}
        self._stop = threading.Event()

    def start(self) -> Consumers:
        self._refresh()  # the first scrape already has an answer
        threading.Thread(target=self._run, name="metrics-consumers", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def latest(self) -> dict[str, int]:
        return dict(self._latest)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._refresh()

    def _refresh(self) -> None:
        try:
            self._latest = reports.queue_consumers(self.app, QUEUES)
        except Exception:
            log.warning("metrics: the workers could not be asked what they consume", exc_info=True)


class OffersCollector:
    def __init__(self, rt: Runtime, app: Any = None, consumers: Consumers | None = None) -> None:
        self.rt = rt
        #: A Celery app to ask the workers which queues they consume (None: not asked).
        self.app = app
        #: Their last answer, kept fresh in the background (None: ask at each collection).
        self.consumers = consumers
        self.beat_lock_key = f"{celery_config(rt.settings)['redbeat_key_prefix']}:lock"  # RedBeat's own lock key

    def collect(self) -> Iterator[Metric]:
        found = figures(self.rt, WINDOW)
        yield from self._figures(found)
        yield from self._db_connections(found.db_connections)
        yield from self._watches()
        yield self._partner_errors()
        yield self._sns_failures()
        yield self._funnel_unsent()
        yield self._unauthenticated()
        yield by_label(
            "offers_hold_findings_open",
            "Holds reconciliation with Stripe flagged for an operator, by kind",
            "kind",
            found.hold_findings,
        )
        yield GaugeMetricFamily(
            "offers_audit_unsealed_rows",
            "Committed audit rows not sealed into the hash chain yet",
            value=found.audit_seal.unsealed_rows,
        )
        yield GaugeMetricFamily(
            "offers_audit_seal_lag_seconds",
            "Age of the oldest committed audit row not sealed into the hash chain (0: all sealed)",
            value=found.audit_seal.lag_seconds,
        )

    def _figures(self, found: Any) -> Iterator[Metric]:
        states = GaugeMetricFamily(
            "offers_by_state", "Offers received in the last hour, by state and reason", labels=["state", "reason"]
        )
        for row in found.offers_by_state:
            states.add_metric([row.state, row.reason or ""], row.offers)
        yield states
        # A family with no figure still says its name (HELP and TYPE), so dashboards and rules can rely on it.
        rate = GaugeMetricFamily(
            "offers_submission_success_rate", "Share of finished offers that finished as designed (last hour)"
        )
        if found.success_rate is not None:
            rate.add_metric([], found.success_rate)
        yield rate
        for name, what, latency in (
            ("offers_validation_seconds", "validation", found.validation_ms),
            ("offers_auction_lag_seconds", "auction_lag", found.auction_lag_ms),
        ):
            gauge = GaugeMetricFamily(name, f"{what} latency percentiles over the last hour", labels=["quantile"])
            for quantile, ms in (("0.50", latency.p50), ("0.95", latency.p95), ("0.99", latency.p99)):
                if ms is not None:
                    gauge.add_metric([quantile], ms / 1000)
            yield gauge
        stages = GaugeMetricFamily(
            "offers_stage_seconds",
            "Per stage, time from the previous stage's commit to this one's (queueing included), last hour",
            labels=["stage", "quantile"],
        )
        for stage, latency in found.stage_ms.items():
            for quantile, ms in (("0.50", latency.p50), ("0.95", latency.p95), ("0.99", latency.p99)):
                if ms is not None:
                    stages.add_metric([stage, quantile], ms / 1000)
        yield stages
        yield by_label("offers_dead_letters", "Pending dead letters by stage", "stage", found.dead_letters)
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
        bands = GaugeMetricFamily(
            "offers_cancellations_by_value_band", "Cancellations in the last hour by value band", labels=["band"]
        )
        for band in found.cancellations.by_value_band:
            bands.add_metric([band.band], band.offers)
        yield bands
        yield GaugeMetricFamily(
            "offers_high_value_cancellation_spike",
            "1 while high-value cancellations spike",
            value=int(found.high_value_cancellations.spike),
        )
        if found.queue_depths is not None:
            yield by_label("offers_queue_depth", "Messages waiting per queue", "queue", found.queue_depths)

    def _watches(self) -> Iterator[Metric]:
        """What the alert rules watch beyond ``stats``: hold age, the nightly export, beat, consumers."""
        with self.rt.db.read() as conn:
            oldest = store_reports.oldest_hold_age_seconds(conn)
            exports = store_reports.export_status(conn)
            verified = audit_anchors.verified(conn, VERIFY_FINDINGS_WINDOW_S)
        yield GaugeMetricFamily(
            "offers_oldest_hold_age_seconds",
            "Age of the oldest card authorization held (Stripe lets it lapse at 7 days); 0 with none",
            value=oldest or 0,
        )
        failed = GaugeMetricFamily(
            "offers_audit_export_failed",
            "1 per audit export that failed after the last one that finished",
            labels=["export_id", "object_key"],
        )
        for export in exports.failing:
            failed.add_metric([str(export.export_id), export.object_key], 1)
        yield failed
        last_done = GaugeMetricFamily(
            "offers_audit_export_last_success_timestamp_seconds", "When the last audit export finished"
        )
        if exports.last_done_at is not None:
            last_done.add_metric([], exports.last_done_at.timestamp())
        yield last_done
        yield GaugeMetricFamily(
            "offers_audit_verify_findings",
            "Most findings of an audit verify run in the last 24 hours (the trail differs from its anchors in S3)",
            value=verified.findings,
        )
        last_verified = GaugeMetricFamily(
            "offers_audit_verify_last_run_timestamp_seconds", "When an audit verify run last finished"
        )
        if verified.last_finished_at is not None:
            last_verified.add_metric([], verified.last_finished_at.timestamp())
        yield last_verified
        if self.rt.redis is not None:
            yield GaugeMetricFamily(
                "offers_beat_running",
                "1 while a beat holds the schedule's lock",
                value=int(self.rt.redis.exists(self.beat_lock_key)),
            )
        if self.consumers is not None or self.app is not None:
            yield by_label(
                "offers_queue_consumers",
                "Workers consuming each queue, as they answer",
                "queue",
                self.consumers.latest() if self.consumers is not None else reports.queue_consumers(self.app, QUEUES),
            )

    def _db_connections(self, used: Any) -> Iterator[Metric]:
        """The connection budget: the Postgres server's connections against max_connections."""
        if used is None:
            return
        yield by_label(
            "offers_db_connections",
            "Client connections to the Postgres server (every database and role) by state;"
            " unknown: another role's session, whose state the fleet's role may not read",
            "state",
            used.by_state,
        )
        yield GaugeMetricFamily(
            "offers_db_max_connections", "The Postgres server's max_connections", value=used.max_connections
        )
        yield GaugeMetricFamily(
            "offers_db_reserved_connections",
            "Connections of max_connections only superusers may open (superuser_reserved_connections, reserved_connections)",
            value=used.reserved,
        )
        yield by_label(
            "offers_db_fleet_connections",
            "The fleet's connections to its database, by process type (prefork, threads, metrics, cli)",
            "process",
            used.fleet_by_process,
        )

    def _counted(self, name: str, documentation: str, labels: list[str], key: str) -> Metric:
        """A counter kept fleet-wide in a Redis hash: one field per label set, ``|``-joined."""
        counter = CounterMetricFamily(name, documentation, labels=labels)
        for field, n in counters.counts(self.rt.redis, key).items():
            counter.add_metric(field.split("|", len(labels) - 1), n)
        return counter

    def _partner_errors(self) -> Metric:
        return self._counted(
            "offers_partner_errors",
            "Partner call failures seen by the fleet",
            ["partner", "code"],
            counters.partner_errors_key(self.rt.settings.redis_key_prefix),
        )

    def _sns_failures(self) -> Metric:
        return self._counted(
            "offers_sns_publish_failures",
            "SNS publishes that failed, by topic",
            ["topic"],
            counters.sns_failures_key(self.rt.settings.redis_key_prefix),
        )

    def _funnel_unsent(self) -> Metric:
        return self._counted(
            "offers_funnel_unsent_events",
            "Product funnel events Segment did not get (queue full, send failed, left at shutdown), by cause",
            ["cause"],
            counters.funnel_unsent_key(self.rt.settings.redis_key_prefix),
        )

    def _unauthenticated(self) -> Metric:
        return self._counted(
            "offers_unauthenticated_messages",
            "Messages refused for want of a valid MAC (never acted upon; recorded as intake rejections), by task and why",
            ["task", "why"],
            counters.unauthenticated_key(self.rt.settings.redis_key_prefix),
        )


class _QuietHandler(WSGIRequestHandler):
    #: A connection that sends nothing is closed after this (socket time-out), freeing its thread.
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: " + format, *args)


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per connection: an idle or slow client never holds up another's scrape."""

    daemon_threads = True
    #: socketserver's default backlog is 5: a burst of connections (idle scrapers, a port scan) overflows
    #: it before the accept thread runs, and a scrape's SYN dropped there waits 1 s for its retransmission.
    request_queue_size = 128

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake here, in the connection's thread and under its time-out, not in accept():
        # a client that connects and never says hello holds only its own thread.
        request.settimeout(_QuietHandler.timeout)
        if isinstance(request, ssl.SSLSocket):
            request.do_handshake()
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics: a connection ended badly", exc_info=True)


class _Cached:
    """A collector whose figures are reused for ``max_age_s``: scrapers at once cost one collection."""

    def __init__(self, collector: Any, max_age_s: float = COLLECTION_MAX_AGE_S) -> None:
        self.collector = collector
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._metrics: list[Metric] = []

    def collect(self) -> list[Metric]:
        with self._lock:
            if time.monotonic() - self._at > self.max_age_s:
                self._metrics = list(self.collector.collect())
                self._at = time.monotonic()
            return list(self._metrics)


def serve(rt: Runtime, host: str, port: int, guard: Guard) -> None:
    from celery import Celery

    registry = CollectorRegistry()
    consumers = None
    if rt.settings.broker_url:
        app = Celery("offers-metrics", set_as_current=False)
        app.config_from_object(celery_config(rt.settings))
        consumers = Consumers(app).start()
    registry.register(_Cached(OffersCollector(rt, consumers=consumers)))
    wsgi_app = guard.wrap(make_wsgi_app(registry))
    server = make_server(host, port, wsgi_app, server_class=_Server, handler_class=_QuietHandler)
    if guard.tls is not None:
        server.socket = guard.tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    try:
        log.info(
            "serving /metrics",
            extra={
                "host": host,
                "port": server.server_port,
                "tls": guard.tls is not None,
                "basic_auth": guard.credentials_digest is not None,
            },
        )
        server.serve_forever()
    finally:
        server.server_close()
        if consumers is not None:
            consumers.stop()
