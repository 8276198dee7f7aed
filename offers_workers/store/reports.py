"""Read models: figures computed exactly from Postgres for ``stats``, ``health``, ``/metrics``, the
demo and the bench: outcomes, success rate, stage latencies, auction lag, dead letters, holds,
stuck offers and cancellations.

Success rate: of the offers that finished the saga, the share that finished it as designed, i.e.
ended ``submitted`` or ``rejected`` for a business reason (a decline, a risk block, a policy rule).
Offers ``dead_lettered`` count as failures: something in the system, not the buyer, stopped them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg import sql

from offers_workers.store.db import Connection, one_row
from offers_workers.store.offers import STUCK, stuck_params

#: Stage name → (the timestamp it starts from, the timestamp it ends at).
STAGE_SPANS = {
    "validation": ("received_at", "validated_at"),
    "payment": ("validated_at", "payment_held_at"),
    "risk": ("payment_held_at", "risk_cleared_at"),
    "auction": ("risk_cleared_at", "auction_triggered_at"),
    "audit": ("auction_triggered_at", "completed_at"),
}

#: Value bands of cancelled offers, in minor units of their currency: (label, from, below).
VALUE_BANDS = (
    ("under 100", 0, 10_000),
    ("100 – 999", 10_000, 100_000),
    ("1,000 – 9,999", 100_000, 1_000_000),
    ("10,000 and over", 1_000_000, None),
)


def _like_prefix(prefix: str) -> str:
    return prefix.replace("%", r"\%").replace("_", r"\_") + "%"


@dataclass(frozen=True)
class Scope:
    """Which offers a report covers: an id prefix (a demo run) and/or those received since a time."""

    offer_id_prefix: str | None = None
    since: datetime | None = None
    #: Synthetic journeys (``synthetic: true``) are probes, not traffic: left out unless asked for.
    include_synthetic: bool = False

    def where(self, time_column: str = "received_at") -> tuple[sql.Composable, list[Any]]:
        """The scope as SQL; ``since`` applies to ``time_column`` (cancellations count by when they happened)."""
        clauses: list[sql.Composable] = [sql.SQL("TRUE") if self.include_synthetic else sql.SQL("NOT synthetic")]
        params: list[Any] = []
        if self.offer_id_prefix:
            clauses.append(sql.SQL("offer_id LIKE %s"))
            params.append(_like_prefix(self.offer_id_prefix))
        if self.since is not None:
            clauses.append(sql.SQL("{} >= %s").format(sql.Identifier(time_column)))
            params.append(self.since)
        return sql.SQL(" AND ").join(clauses), params


@dataclass(frozen=True)
class OutcomeCount:
    """Offers in one state for one reason."""

    state: str
    reason: str | None
    offers: int


@dataclass(frozen=True)
class Percentiles:
    """Milliseconds at the 50th, 95th and 99th percentile (None without data), over ``count`` offers."""

    p50: float | None
    p95: float | None
    p99: float | None
    count: int


@dataclass(frozen=True)
class ActiveHolds:
    holds: int
    amount_cents: int


@dataclass(frozen=True)
class CancelledForReason:
    reason: str | None
    offers: int
    #: The sum Postgres gives (numeric), as read.
    amount_cents: Decimal | None


@dataclass(frozen=True)
class ValueBand:
    band: str
    offers: int


@dataclass(frozen=True)
class Cancellations:
    by_reason: list[CancelledForReason]
    by_value_band: list[ValueBand]


@dataclass(frozen=True)
class SpikeCheck:
    recent: int
    #: High-value cancellations per recent-window length over the trailing window.
    trailing_rate: float
    ratio: float | None
    spike: bool
    by_reason: dict[str, int]


def outcome_counts(conn: Connection, scope: Scope) -> list[OutcomeCount]:
    where, params = scope.where()
    query = sql.SQL(
        "SELECT state, reason, count(*) AS offers FROM offers WHERE {} GROUP BY state, reason ORDER BY count(*) DESC, state, reason"
    ).format(where)
    return [OutcomeCount(r["state"], r["reason"], r["offers"]) for r in conn.execute(query, params)]


def success_rate(conn: Connection, scope: Scope) -> float | None:
    where, params = scope.where()
    query = sql.SQL(
        "SELECT count(*) FILTER (WHERE state IN ('submitted', 'rejected', 'cancelled')) AS ok,"
        " count(*) FILTER (WHERE state = 'dead_lettered') AS failed FROM offers WHERE {}"
    ).format(where)
    row = one_row(conn.execute(query, params))
    finished = row["ok"] + row["failed"]
    return float(row["ok"] / finished) if finished else None


def _percentiles(conn: Connection, scope: Scope, start: str, end: str) -> Percentiles:
    where, params = scope.where()
    span = sql.SQL("extract(epoch FROM ({} - {})) * 1000").format(sql.Identifier(end), sql.Identifier(start))
    query = sql.SQL(
        "SELECT count(*) AS n, percentile_cont(0.5) WITHIN GROUP (ORDER BY {span}) AS p50,"
        " percentile_cont(0.95) WITHIN GROUP (ORDER BY {span}) AS p95,"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY {span}) AS p99"
        " FROM offers WHERE {where} AND {end} IS NOT NULL AND {start} IS NOT NULL"
    ).format(span=span, where=where, start=sql.Identifier(start), end=sql.Identifier(end))
    row = one_row(conn.execute(query, params))

    def ms(key: str) -> float | None:
        return float(row[key]) if row[key] is not None else None

    return Percentiles(ms("p50"), ms("p95"), ms("p99"), row["n"])


def stage_latencies(conn: Connection, scope: Scope) -> dict[str, Percentiles]:
    """Per stage, milliseconds from the previous stage's commit to this one's (queueing included)."""
    return {stage: _percentiles(conn, scope, start, end) for stage, (start, end) in STAGE_SPANS.items()}


def auction_lag(conn: Connection, scope: Scope) -> Percentiles:
    """Intake → auction trigger, in milliseconds (the runbook's "auction-trigger lag")."""
    return _percentiles(conn, scope, "received_at", "auction_triggered_at")


# --- the product funnel --------------------------------------------------------------------------


@dataclass(frozen=True)
class Funnel:
    """The product funnel's steps in a window (draft → submitted → auction, and the ends), each
    counted by when it happened, as Segment receives its events; synthetic offers left out.

    ``conversion``: each step over the one before (None without the one before). Drafts and offers
    are not matched one to one: an offer may be submitted without a draft, or a draft checked twice.
    """

    drafts_validated: int
    drafts_valid: int
    submitted: int
    auction_triggered: int
    rejected: int
    rejected_by_reason: dict[str, int]
    cancelled: int
    conversion: dict[str, float | None]


def _count(conn: Connection, scope: Scope, time_column: str) -> int:
    """Offers that reached the step whose time ``time_column`` keeps, counted by that time."""
    where, params = scope.where(time_column)
    query = sql.SQL("SELECT count(*) AS n FROM offers WHERE {} IS NOT NULL AND {}").format(
        sql.Identifier(time_column), where
    )
    return int(one_row(conn.execute(query, params))["n"])


def funnel(conn: Connection, scope: Scope) -> Funnel:
    """The funnel from Postgres: checked drafts (``draft_validations``) and the offers' stage timestamps."""
    where, params = scope.where("rejected_at")
    rejected = {
        r["reason"] or "": r["n"]
        for r in conn.execute(
            sql.SQL(
                "SELECT reason, count(*) AS n FROM offers WHERE rejected_at IS NOT NULL AND {}"
                " GROUP BY reason ORDER BY count(*) DESC, reason"
            ).format(where),
            params,
        )
    }
    where, params = scope.where("validated_at")
    checked = one_row(
        conn.execute(
            sql.SQL(
                "SELECT count(*) AS n, count(*) FILTER (WHERE valid) AS valid FROM draft_validations WHERE {}"
            ).format(where),
            params,
        )
    )
    drafts = int(checked["n"])
    submitted = _count(conn, scope, "received_at")
    auction = _count(conn, scope, "auction_triggered_at")

    def share(part: int, whole: int) -> float | None:
        return part / whole if whole else None

    return Funnel(
        drafts_validated=drafts,
        drafts_valid=int(checked["valid"]),
        submitted=submitted,
        auction_triggered=auction,
        rejected=sum(rejected.values()),
        rejected_by_reason=rejected,
        cancelled=_count(conn, scope, "cancelled_at"),
        conversion={
            "draft_to_submitted": share(submitted, drafts),
            "submitted_to_auction": share(auction, submitted),
        },
    )


# --- cancellations and the high-value watch ---------------------------------------------------------


def _cancel_scope(scope: Scope) -> tuple[sql.Composable, list[Any]]:
    where, params = scope.where("cancelled_at")
    return sql.SQL("state = 'cancelled' AND {}").format(where), params


def cancellations(conn: Connection, scope: Scope) -> Cancellations:
    """Cancelled offers by reason and by value band."""
    where, params = _cancel_scope(scope)
    by_reason = [
        CancelledForReason(r["reason"], r["offers"], r["amount_cents"])
        for r in conn.execute(
            sql.SQL(
                "SELECT reason, count(*) AS offers, sum(amount_cents) AS amount_cents FROM offers WHERE {}"
                " GROUP BY reason ORDER BY count(*) DESC, reason"
            ).format(where),
            params,
        )
    ]
    bands = []
    for label, low, high in VALUE_BANDS:
        row = one_row(
            conn.execute(
                sql.SQL(
                    "SELECT count(*) AS offers FROM offers WHERE {} AND amount_cents >= %s AND (%s::bigint IS NULL OR amount_cents < %s)"
                ).format(where),
                [*params, low, high, high],
            )
        )
        bands.append(ValueBand(label, row["offers"]))
    return Cancellations(by_reason, bands)


def cancellation_spike(
    conn: Connection,
    *,
    high_value_cents: int,
    window_s: float,
    trailing_s: float,
    ratio: float,
    minimum: int,
    offer_id_prefix: str | None = None,
) -> SpikeCheck:
    """Compare the recent window's high-value cancellations with the trailing window's rate."""
    prefix = _like_prefix(offer_id_prefix or "")
    row = one_row(
        conn.execute(
            """
        SELECT count(*) FILTER (WHERE cancelled_at >= clock_timestamp() - make_interval(secs => %(w)s)) AS recent,
               count(*) FILTER (WHERE cancelled_at < clock_timestamp() - make_interval(secs => %(w)s)) AS trailing
        FROM offers
        WHERE state = 'cancelled' AND NOT synthetic AND amount_cents >= %(hv)s AND offer_id LIKE %(prefix)s
          AND cancelled_at >= clock_timestamp() - make_interval(secs => %(w)s + %(t)s)
        """,
            {"w": window_s, "t": trailing_s, "hv": high_value_cents, "prefix": prefix},
        )
    )
    reasons = conn.execute(
        "SELECT reason, count(*) AS n FROM offers WHERE state = 'cancelled' AND NOT synthetic AND amount_cents >= %s AND offer_id LIKE %s"
        " AND cancelled_at >= clock_timestamp() - make_interval(secs => %s) GROUP BY reason ORDER BY count(*) DESC",
        (high_value_cents, prefix, window_s),
    ).fetchall()
    trailing_rate = row["trailing"] * window_s / trailing_s
    observed = row["recent"] / trailing_rate if trailing_rate else None
    spike = row["recent"] >= minimum and (observed is None or observed >= ratio)
    return SpikeCheck(row["recent"], trailing_rate, observed, spike, {r["reason"]: r["n"] for r in reasons})


# --- operations ----------------------------------------------------------------------------------------


def pending_dead_letters(conn: Connection) -> dict[str, int]:
    """Pending dead letters per stage, by stage."""
    return {
        r["stage"]: r["n"]
        for r in conn.execute(
            "SELECT stage, count(*) AS n FROM dead_letters WHERE status = 'pending' GROUP BY stage ORDER BY stage"
        )
    }


def active_holds(conn: Connection) -> ActiveHolds:
    row = one_row(
        conn.execute(
            "SELECT count(*) AS n, coalesce(sum(amount_cents), 0) AS cents FROM offers WHERE hold_status = 'held'"
        )
    )
    return ActiveHolds(row["n"], int(row["cents"]))


def stuck_offers(conn: Connection, older_than_s: float) -> int:
    """How many offers are stuck (``offers.STUCK``, what the recovery sweep re-sends)."""
    query = sql.SQL("SELECT count(*) AS n FROM offers WHERE {}").format(STUCK)
    return int(one_row(conn.execute(query, stuck_params(older_than_s)))["n"])


# --- a run of offers (demo, bench) ----------------------------------------------------------------------


@dataclass(frozen=True)
class RunProgress:
    """How far a run's offers (ids with one prefix) have got."""

    submitted: int
    #: Ended otherwise: rejected, cancelled or dead-lettered.
    failed: int
    #: When the last one was submitted (epoch seconds), None before any.
    last_done: float | None


def run_progress(conn: Connection, offer_id_prefix: str) -> RunProgress:
    row = one_row(
        conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'submitted') AS submitted,"
            " count(*) FILTER (WHERE state IN ('rejected', 'cancelled', 'dead_lettered')) AS failed,"
            " extract(epoch FROM max(completed_at))::float8 AS last_done"
            " FROM offers WHERE offer_id LIKE %s",
            (_like_prefix(offer_id_prefix),),
        )
    )
    return RunProgress(row["submitted"], row["failed"], row["last_done"])


@dataclass(frozen=True)
class AuctionLag:
    """One offer's intake → auction trigger, in milliseconds, how it paid, and each stage's share
    (``validation``: intake's commit to validated, ``payment``, ``risk``, ``auction``: from the
    state before to the stage's own)."""

    offer_id: str
    payment_method: str
    lag_ms: float
    stages_ms: dict[str, float]


#: The stages between intake and the auction, in the saga's order.
LAG_STAGES = ("validation", "payment", "risk", "auction")


def auction_lags(conn: Connection, offer_id_prefix: str) -> list[AuctionLag]:
    """Each auction-triggered offer of a run (ids with one prefix)."""
    rows = conn.execute(
        "SELECT offer_id, payment_method,"
        " extract(epoch FROM auction_triggered_at - received_at)::float8 * 1000 AS lag_ms,"
        " extract(epoch FROM validated_at - received_at)::float8 * 1000 AS validation,"
        " extract(epoch FROM payment_held_at - validated_at)::float8 * 1000 AS payment,"
        " extract(epoch FROM risk_cleared_at - payment_held_at)::float8 * 1000 AS risk,"
        " extract(epoch FROM auction_triggered_at - risk_cleared_at)::float8 * 1000 AS auction"
        " FROM offers WHERE offer_id LIKE %s AND auction_triggered_at IS NOT NULL",
        (_like_prefix(offer_id_prefix),),
    )
    return [
        AuctionLag(r["offer_id"], r["payment_method"], r["lag_ms"], {stage: r[stage] for stage in LAG_STAGES})
        for r in rows
    ]


# --- what /metrics adds for the alert rules ----------------------------------------------------------


def oldest_hold_age_seconds(conn: Connection) -> float | None:
    """Age of the oldest authorization the fleet holds (Stripe lets an uncaptured one lapse at 7 days)."""
    row = one_row(
        conn.execute(
            "SELECT extract(epoch FROM clock_timestamp() - min(payment_held_at))::float8 AS age"
            " FROM offers WHERE hold_status = 'held'"
        )
    )
    return float(row["age"]) if row["age"] is not None else None


@dataclass(frozen=True)
class FailedExport:
    export_id: int
    object_key: str
    error: str | None


@dataclass(frozen=True)
class ExportStatus:
    #: Exports that failed after the last one that finished: each is an open alert until a later one finishes.
    failing: list[FailedExport]
    last_done_at: datetime | None


def export_status(conn: Connection) -> ExportStatus:
    done = one_row(
        conn.execute("SELECT max(id) AS id, max(finished_at) AS at FROM audit_exports WHERE status = 'done'")
    )
    failing = conn.execute(
        "SELECT id, object_key, error FROM audit_exports WHERE status = 'failed' AND id > coalesce(%s, 0) ORDER BY id",
        (done["id"],),
    ).fetchall()
    return ExportStatus(
        [FailedExport(r["id"], r["object_key"], r["error"]) for r in failing],
        done["at"],
    )
