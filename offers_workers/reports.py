"""Figures computed exactly from Postgres: outcomes, success rate, stage latencies, auction lag.

Success rate: of the offers that finished the saga, the share that finished it as designed, i.e.
ended ``submitted`` or ``rejected`` for a business reason (a decline, a risk block, a policy rule).
Offers ``dead_lettered`` count as failures: something in the system, not the buyer, stopped them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from offers_workers import states

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

    def where(self) -> tuple[sql.Composable, list[Any]]:
        clauses: list[sql.Composable] = [sql.SQL("TRUE")]
        params: list[Any] = []
        if self.offer_id_prefix:
            clauses.append(sql.SQL("offer_id LIKE %s"))
            params.append(self.offer_id_prefix.replace("%", r"\%").replace("_", r"\_") + "%")
        if self.since is not None:
            clauses.append(sql.SQL("received_at >= %s"))
            params.append(self.since)
        return sql.SQL(" AND ").join(clauses), params


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
