"""Draft validations: each draft ``offers.validate_draft`` checked, the product funnel's first step."""

from __future__ import annotations

from offers_workers.domain.payload import OfferPayload
from offers_workers.store.db import Connection, one_row


def record(conn: Connection, draft: OfferPayload, *, valid: bool) -> int:
    """Count one checked draft; returns its id."""
    row = one_row(
        conn.execute(
            "INSERT INTO draft_validations (offer_id, listing_id, maker_id, valid, synthetic)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (draft.offer_id, draft.listing_id, draft.maker_id, valid, draft.synthetic),
        )
    )
    return int(row["id"])


def delete_older(conn: Connection, older_than_s: float, limit: int) -> int:
    """Delete up to ``limit`` rows checked more than ``older_than_s`` ago, oldest first; how many went."""
    return conn.execute(
        "DELETE FROM draft_validations WHERE id IN (SELECT id FROM draft_validations"
        " WHERE validated_at < clock_timestamp() - make_interval(secs => %s) ORDER BY validated_at LIMIT %s)",
        (older_than_s, limit),
    ).rowcount
