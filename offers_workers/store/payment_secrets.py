"""Payment secrets kept at rest, found and re-sealed under the current key (`secrets rotate`)."""

from __future__ import annotations

from psycopg import sql
from psycopg.types.json import Jsonb

from offers_workers.domain.secrets import DROPPED, PREFIX, PaymentKeys, SecretKeyMissing
from offers_workers.store.db import Connection

#: Bank-account offers holding a Plaid token not sealed under the key ``%(current)s`` (a LIKE pattern).
STALE_OFFERS = sql.SQL(
    "FROM offers WHERE payment_method = 'bank_account'"
    " AND payload->'payment'->>'plaid_access_token' IS DISTINCT FROM %(dropped)s"
    " AND (payload->'payment'->>'plaid_access_token' NOT LIKE %(current)s"
    "      OR payload->'payment'->>'plaid_account_id' NOT LIKE %(current)s)"
)


def _params(keys: PaymentKeys) -> dict[str, str]:
    return {"dropped": DROPPED, "current": f"{PREFIX}{keys.current}:%"}


def count_stale_offers(conn: Connection, keys: PaymentKeys) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) AS n {}").format(STALE_OFFERS), _params(keys)).fetchone()
    return int(row["n"]) if row else 0


def reseal_offers(conn: Connection, keys: PaymentKeys, *, after: str, limit: int) -> tuple[list[str], list[str]]:
    """Re-seal up to ``limit`` stale offers after offer id ``after``; (the ids re-sealed, the ids whose
    key is missing from the ring)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT offer_id, payload {} AND offer_id > %(after)s ORDER BY offer_id LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
        ).format(STALE_OFFERS),
        {**_params(keys), "after": after, "limit": limit},
    ).fetchall()
    done, missing = [], []
    for row in rows:
        try:
            payload = keys.seal_within(row["payload"])
        except SecretKeyMissing:
            missing.append(row["offer_id"])
            continue
        conn.execute(
            "UPDATE offers SET payload = jsonb_set(payload, '{payment}', %s::jsonb) WHERE offer_id = %s",
            (Jsonb(payload["payment"]), row["offer_id"]),
        )
        done.append(row["offer_id"])
    return done, missing


def reseal_dead_letters(conn: Connection, keys: PaymentKeys) -> tuple[int, int]:
    """Re-seal the secrets kept in dead letters' kwargs (few rows: an intake entry's offer); (re-sealed, key missing)."""
    done = missing = 0
    rows = conn.execute(
        "SELECT id, kwargs FROM dead_letters WHERE strpos(kwargs::text, 'plaid_') > 0 ORDER BY id FOR UPDATE SKIP LOCKED"
    ).fetchall()
    for row in rows:
        if not keys.needs_resealing(row["kwargs"]):
            continue
        try:
            kwargs = keys.seal_within(row["kwargs"])
        except SecretKeyMissing:
            missing += 1
            continue
        conn.execute("UPDATE dead_letters SET kwargs = %s WHERE id = %s", (Jsonb(kwargs), row["id"]))
        done += 1
    return done, missing
