"""What reconciliation with Stripe found (``holds reconcile``, the beat's ``offers.reconcile_holds``)."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from offers_workers.store.db import Connection


def record(
    conn: Connection,
    kind: str,
    *,
    offer_id: str | None,
    payment_intent_id: str,
    detail: dict[str, Any],
    resolved: bool,
) -> bool:
    """Record a finding (``resolved``: already dealt with, e.g. the hold released); False if the
    same finding is already open."""
    row = conn.execute(
        "INSERT INTO hold_findings (kind, offer_id, payment_intent_id, detail, resolved_at)"
        " VALUES (%s, %s, %s, %s, CASE WHEN %s THEN clock_timestamp() END)"
        " ON CONFLICT (kind, payment_intent_id) WHERE resolved_at IS NULL DO NOTHING RETURNING id",
        (kind, offer_id, payment_intent_id, Jsonb(detail), resolved),
    ).fetchone()
    return row is not None


def resolve_cleared(conn: Connection, kinds: list[str], checked: list[str], still_found: list[str]) -> int:
    """Close the open findings of ``kinds`` for intents this run ``checked`` and no longer found wrong."""
    return conn.execute(
        "UPDATE hold_findings SET resolved_at = clock_timestamp() WHERE resolved_at IS NULL"
        " AND kind = ANY(%s) AND payment_intent_id = ANY(%s) AND NOT payment_intent_id = ANY(%s)",
        (kinds, checked, still_found),
    ).rowcount


def open_counts(conn: Connection) -> dict[str, int]:
    """Open findings by kind: what waits for an operator."""
    rows = conn.execute("SELECT kind, count(*) AS n FROM hold_findings WHERE resolved_at IS NULL GROUP BY kind")
    return {r["kind"]: int(r["n"]) for r in rows}
