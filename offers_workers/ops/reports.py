"""Figures computed exactly from Postgres: outcomes, success rate, stage latencies, auction lag.

Success rate: of the offers that finished the saga, the share that finished it as designed, i.e.
ended ``submitted`` or ``rejected`` for a business reason (a decline, a risk block, a policy rule).
Offers ``dead_lettered`` count as failures: something in the system, not the buyer, stopped them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import kombu
import psycopg
import redis
from psycopg import sql

from offers_workers.domain import states

#: Stage name → (the timestamp it starts from, the timestamp it ends at).
STAGE_SPANS = {
    "validation": ("received_at", "validated_at"),
    "payment": ("validated_at", "payment_held_at"),
    "risk": ("payment_held_at", "risk_cleared_at"),
    "auction": ("risk_cleared_at", "auction_triggered_at"),
    "audit": ("auction_triggered_at", "completed_at"),
}


@dataclass(frozen=True)
class Scope:
    """Which offers a report covers: an id prefix (a demo run) and/or those received since a time."""

    offer_id_prefix: str | None = None
    since: Any = None
    #: Synthetic journeys (``synthetic: true``) are probes, not traffic: left out unless asked for.
    include_synthetic: bool = False

    def where(self, time_column: str = "received_at") -> tuple[sql.Composable, list[Any]]:
        """The scope as SQL; ``since`` applies to ``time_column`` (cancellations count by when they happened)."""
        clauses: list[sql.Composable] = [sql.SQL("TRUE") if self.include_synthetic else sql.SQL("NOT synthetic")]
        params: list[Any] = []
        if self.offer_id_prefix:
            clauses.append(sql.SQL("offer_id LIKE %s"))
            params.append(self.offer_id_prefix.replace("%", r"\%").replace("_", r"\_") + "%")
        if self.since is not None:
            clauses.append(sql.SQL("{} >= %s").format(sql.Identifier(time_column)))
            params.append(self.since)
        return sql.SQL(" AND ").join(clauses), params


def ms_text(value: float | None) -> str:
    """Milliseconds for a report table ("-" when there is no figure)."""
    return "-" if value is None else f"{value:,.0f}"


def outcome_counts(conn: psycopg.Connection, scope: Scope) -> list[dict[str, Any]]:
    where, params = scope.where()
    query = sql.SQL(
        "SELECT state, reason, count(*) AS offers FROM offers WHERE {} GROUP BY state, reason ORDER BY count(*) DESC, state, reason"
    ).format(where)
    return conn.execute(query, params).fetchall()


def success_rate(conn: psycopg.Connection, scope: Scope) -> float | None:
    where, params = scope.where()
    query = sql.SQL(
        "SELECT count(*) FILTER (WHERE state IN ('submitted', 'rejected', 'cancelled')) AS ok,"
        " count(*) FILTER (WHERE state = 'dead_lettered') AS failed FROM offers WHERE {}"
    ).format(where)
    row = conn.execute(query, params).fetchone()
    finished = row["ok"] + row["failed"]
    return row["ok"] / finished if finished else None


def _percentiles(conn: psycopg.Connection, scope: Scope, start: str, end: str) -> dict[str, float | None]:
    where, params = scope.where()
    span = sql.SQL("extract(epoch FROM ({} - {})) * 1000").format(sql.Identifier(end), sql.Identifier(start))
    query = sql.SQL(
        "SELECT count(*) AS n, percentile_cont(0.5) WITHIN GROUP (ORDER BY {span}) AS p50,"
        " percentile_cont(0.95) WITHIN GROUP (ORDER BY {span}) AS p95,"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY {span}) AS p99"
        " FROM offers WHERE {where} AND {end} IS NOT NULL AND {start} IS NOT NULL"
    ).format(span=span, where=where, start=sql.Identifier(start), end=sql.Identifier(end))
    row = conn.execute(query, params).fetchone()
    return {k: (float(row[k]) if row[k] is not None else None) for k in ("p50", "p95", "p99")} | {"count": row["n"]}


def stage_latencies(conn: psycopg.Connection, scope: Scope) -> dict[str, dict[str, float | None]]:
    """Per stage, milliseconds from the previous stage's commit to this one's (queueing included)."""
    return {stage: _percentiles(conn, scope, start, end) for stage, (start, end) in STAGE_SPANS.items()}


def auction_lag(conn: psycopg.Connection, scope: Scope) -> dict[str, float | None]:
    """Intake → auction trigger, in milliseconds (the runbook's "auction-trigger lag")."""
    return _percentiles(conn, scope, "received_at", "auction_triggered_at")


def open_offers(conn: psycopg.Connection, scope: Scope) -> int:
    where, params = scope.where()
    query = sql.SQL("SELECT count(*) AS n FROM offers WHERE state = ANY(%s) AND {}").format(where)
    return conn.execute(query, [list(states.OPEN), *params]).fetchone()["n"]


# --- cancellations and the high-value watch ---------------------------------------------------------

#: Value bands of cancelled offers, in minor units of their currency: (label, from, below).
VALUE_BANDS = (
    ("under 100", 0, 10_000),
    ("100 – 999", 10_000, 100_000),
    ("1,000 – 9,999", 100_000, 1_000_000),
    ("10,000 and over", 1_000_000, None),
)


def _cancel_scope(scope: Scope) -> tuple[sql.Composable, list[Any]]:
    where, params = scope.where("cancelled_at")
    return sql.SQL("state = 'cancelled' AND {}").format(where), params


def cancellations(conn: psycopg.Connection, scope: Scope) -> dict[str, list[dict[str, Any]]]:
    """Cancelled offers by reason and by value band."""
    where, params = _cancel_scope(scope)
    by_reason = conn.execute(
        sql.SQL(
            "SELECT reason, count(*) AS offers, sum(amount_cents) AS amount_cents FROM offers WHERE {}"
            " GROUP BY reason ORDER BY count(*) DESC, reason"
        ).format(where),
        params,
    ).fetchall()
    bands = []
    for label, low, high in VALUE_BANDS:
        row = conn.execute(
            sql.SQL(
                "SELECT count(*) AS offers FROM offers WHERE {} AND amount_cents >= %s AND (%s::bigint IS NULL OR amount_cents < %s)"
            ).format(where),
            [*params, low, high, high],
        ).fetchone()
        bands.append({"band": label, "offers": row["offers"]})
    return {"by_reason": by_reason, "by_value_band": bands}


@dataclass(frozen=True)
class SpikeCheck:
    recent: int
    #: High-value cancellations per recent-window length over the trailing window.
    trailing_rate: float
    ratio: float | None
    spike: bool
    by_reason: dict[str, int]


def cancellation_spike(
    conn: psycopg.Connection,
    *,
    high_value_cents: int,
    window_s: float,
    trailing_s: float,
    ratio: float,
    minimum: int,
    offer_id_prefix: str | None = None,
) -> SpikeCheck:
    """Compare the recent window's high-value cancellations with the trailing window's rate."""
    prefix = (offer_id_prefix or "").replace("%", r"\%").replace("_", r"\_") + "%"
    row = conn.execute(
        """
        SELECT count(*) FILTER (WHERE cancelled_at >= clock_timestamp() - make_interval(secs => %(w)s)) AS recent,
               count(*) FILTER (WHERE cancelled_at < clock_timestamp() - make_interval(secs => %(w)s)) AS trailing
        FROM offers
        WHERE state = 'cancelled' AND NOT synthetic AND amount_cents >= %(hv)s AND offer_id LIKE %(prefix)s
          AND cancelled_at >= clock_timestamp() - make_interval(secs => %(w)s + %(t)s)
        """,
        {"w": window_s, "t": trailing_s, "hv": high_value_cents, "prefix": prefix},
    ).fetchone()
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


def dlq_depth(conn: psycopg.Connection) -> dict[str, int]:
    """Pending dead letters per stage."""
    return {
        r["stage"]: r["n"]
        for r in conn.execute(
            "SELECT stage, count(*) AS n FROM dead_letters WHERE status = 'pending' GROUP BY stage ORDER BY stage"
        )
    }


def active_holds(conn: psycopg.Connection) -> dict[str, int]:
    row = conn.execute(
        "SELECT count(*) AS n, coalesce(sum(amount_cents), 0) AS cents FROM offers WHERE hold_status = 'held'"
    ).fetchone()
    return {"holds": row["n"], "amount_cents": int(row["cents"])}


def stuck_offers(conn: psycopg.Connection, older_than_s: float) -> int:
    """Open offers with no progress and no retry due for longer than the recovery threshold."""
    return conn.execute(
        "SELECT count(*) AS n FROM offers WHERE state = ANY(%(open)s)"
        " AND updated_at < clock_timestamp() - make_interval(secs => %(age)s)"
        " AND (retry_due_at IS NULL OR retry_due_at < clock_timestamp() - make_interval(secs => %(age)s))",
        {"open": list(states.OPEN), "age": older_than_s},
    ).fetchone()["n"]


def queue_depths(settings: Any, queues: list[str]) -> dict[str, int]:
    """Messages waiting per queue on the broker, Redis or RabbitMQ (not counting those a worker holds)."""
    if settings.broker_is_rabbitmq:
        return _rabbitmq_queue_depths(settings.broker_url, queues)
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=5)
    try:
        return _redis_queue_depths(client, settings.broker_key_prefix, queues)
    finally:
        client.close()


def _redis_queue_depths(client: redis.Redis, key_prefix: str, queues: list[str]) -> dict[str, int]:
    # kombu keeps priorities 3, 6 and 9 in lists of their own beside the queue's.
    depths = {}
    for queue in queues:
        keys = [f"{key_prefix}{queue}"] + [f"{key_prefix}{queue}\x06\x16{p}" for p in (3, 6, 9)]
        depths[queue] = sum(client.llen(k) for k in keys)
    return depths


def _rabbitmq_queue_depths(broker_url: str, queues: list[str]) -> dict[str, int]:
    depths = {}
    with kombu.Connection(broker_url, connect_timeout=5) as conn:
        for queue in queues:
            # A passive declare reads the count without creating the queue; a missing queue
            # closes the channel, so each queue gets one of its own.
            with conn.channel() as channel:
                try:
                    depths[queue] = channel.queue_declare(queue, passive=True).message_count
                except conn.channel_errors:
                    depths[queue] = 0
    return depths
