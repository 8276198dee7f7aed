"""The figures of ``stats``, ``health`` and ``/metrics``: read at once from Postgres (queue depths from
the broker), exact for a window, synthetic offers left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from config.celery import QUEUES
from offers_workers.ops import reports
from offers_workers.runtime import APPLICATION_NAME_PREFIX, Runtime
from offers_workers.store import audit_trail, connections, hold_findings, roles
from offers_workers.store import reports as store_reports


@dataclass(frozen=True)
class HighValueCancellations:
    """The high-value cancellation watch as ``stats`` shows it."""

    threshold_cents: int
    recent: int
    trailing_rate: float
    ratio: float | None
    spike: bool
    by_reason: dict[str, int]


@dataclass(frozen=True)
class AuditSeal:
    """The audit chain's sealer as ``stats`` shows it."""

    sealed_through: int
    unsealed_rows: int
    #: Age of the oldest committed row not sealed yet; 0 when every row is sealed.
    lag_seconds: float


@dataclass(frozen=True)
class Figures:
    """Every figure of ``stats`` (and of ``health`` and ``/metrics``); ``to_json`` is `stats --json`."""

    window_seconds: float
    offers_by_state: list[store_reports.OutcomeCount]
    success_rate: float | None
    validation_ms: store_reports.Percentiles
    auction_lag_ms: store_reports.Percentiles
    #: Per stage, from the previous stage's commit to this one's (validation_ms is its validation).
    stage_ms: dict[str, store_reports.Percentiles]
    #: Pending dead letters per stage.
    dead_letters: dict[str, int]
    active_holds: store_reports.ActiveHolds
    stuck_offers: int
    cancellations: store_reports.Cancellations
    high_value_cancellations: HighValueCancellations
    #: Open findings of reconciliation with Stripe, by kind (what waits for an operator).
    hold_findings: dict[str, int]
    #: Messages waiting per queue; None without a broker.
    queue_depths: dict[str, int] | None
    #: How far the audit sealer is behind (the chain's sealed end, the committed rows past it).
    audit_seal: AuditSeal
    #: Connections to the Postgres server against max_connections (the connection budget).
    db_connections: connections.ConnectionUsage | None = None
    #: The product funnel's steps and conversion (what Segment should have received).
    funnel: store_reports.Funnel | None = None
    #: What the fleet's login could do to the audit trail beyond appending and reading it.
    audit_privileges: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def figures(rt: Runtime, window: timedelta) -> Figures:
    """Every figure of ``stats``, exact from Postgres (queues from the broker), synthetic offers left out."""
    s = rt.settings
    scope = store_reports.Scope(since=datetime.now(UTC) - window)
    with rt.db.transaction() as conn:
        spike = store_reports.cancellation_spike(
            conn,
            high_value_cents=s.high_value_cents,
            window_s=s.cancel_spike_window_seconds,
            trailing_s=s.cancel_spike_trailing_seconds,
            ratio=s.cancel_spike_ratio,
            minimum=s.cancel_spike_min,
        )
        offers_by_state = store_reports.outcome_counts(conn, scope)
        success_rate = store_reports.success_rate(conn, scope)
        stage_ms = store_reports.stage_latencies(conn, scope)
        auction_lag_ms = store_reports.auction_lag(conn, scope)
        dead_letters = store_reports.pending_dead_letters(conn)
        active_holds = store_reports.active_holds(conn)
        stuck_offers = store_reports.stuck_offers(conn, s.recovery_after_seconds)
        cancellations = store_reports.cancellations(conn, scope)
        open_findings = hold_findings.open_counts(conn)
        seal = audit_trail.seal_lag(conn)
        db_connections = connections.usage(conn, APPLICATION_NAME_PREFIX)
        funnel = store_reports.funnel(conn, scope)
        breached = [b.what for b in roles.breaches(conn)]
    return Figures(
        window_seconds=window.total_seconds(),
        offers_by_state=offers_by_state,
        success_rate=success_rate,
        validation_ms=stage_ms["validation"],
        auction_lag_ms=auction_lag_ms,
        stage_ms=stage_ms,
        dead_letters=dead_letters,
        active_holds=active_holds,
        stuck_offers=stuck_offers,
        cancellations=cancellations,
        high_value_cancellations=HighValueCancellations(
            threshold_cents=s.high_value_cents,
            recent=spike.recent,
            trailing_rate=round(spike.trailing_rate, 2),
            ratio=spike.ratio,
            spike=spike.spike,
            by_reason=spike.by_reason,
        ),
        hold_findings=open_findings,
        queue_depths=reports.queue_depths(s, QUEUES) if s.broker_url else None,
        audit_seal=AuditSeal(
            sealed_through=seal.sealed_through,
            unsealed_rows=seal.unsealed_rows,
            lag_seconds=seal.lag_seconds,
        ),
        db_connections=db_connections,
        funnel=funnel,
        audit_privileges=breached,
    )
