"""Makers' offer policies and their listings: loaded from a file into Postgres, cached in Redis.

The cache is one Redis hash (listing id → listing with its maker's policy, and when it was cached).
Loading a policy file deletes the hash, so every worker sees the new policy on its next lookup.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
import yaml
from pydantic import BaseModel, ValidationError

from offers_workers.domain.policy import Listing, ListingPolicy, MakerPolicy, PolicyFile, PolicyFileError
from offers_workers.store.db import Connection, Database, one_row


def read_policy_file(path: Path) -> PolicyFile:
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyFileError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise PolicyFileError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    try:
        policy = PolicyFile.model_validate(data or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise PolicyFileError(f"{path}: {where}: {err['msg']}") from None
    makers = {m.maker_id for m in policy.makers}
    for listing in policy.listings:
        if listing.maker_id not in makers:
            raise PolicyFileError(
                f"{path}: listing {listing.listing_id} names maker {listing.maker_id}, not in the file"
            )
    return policy


class PolicyStore:
    """Reads and writes policies; ``redis`` may be None (no cache), e.g. in unit tests."""

    def __init__(self, redis_client: redis.Redis | None, *, key_prefix: str, cache_seconds: int) -> None:
        self.redis = redis_client
        self.cache_key = f"{key_prefix}policy:listings"
        self.cache_seconds = cache_seconds

    def load(self, conn: Connection, policy: PolicyFile) -> tuple[int, int]:
        """Upsert makers and listings in the caller's transaction; returns (makers, listings).

        Only upserts: rows not in the file stay as they are, the synthetic journey's among them
        (and their ``synthetic`` mark is never set or cleared here).
        """
        for m in policy.makers:
            conn.execute(
                """
                INSERT INTO makers (maker_id, display_name, min_offer_cents, auto_reject_below_pct,
                                    accepts_bank_payments, sla_hours, updated_at)
                VALUES (%s, %s, %s, %s, %s, %s, now())
                ON CONFLICT (maker_id) DO UPDATE SET
                    display_name = EXCLUDED.display_name, min_offer_cents = EXCLUDED.min_offer_cents,
                    auto_reject_below_pct = EXCLUDED.auto_reject_below_pct,
                    accepts_bank_payments = EXCLUDED.accepts_bank_payments,
                    sla_hours = EXCLUDED.sla_hours, updated_at = now()
                """,
                (
                    m.maker_id,
                    m.display_name,
                    m.min_offer_cents,
                    m.auto_reject_below_pct,
                    m.accepts_bank_payments,
                    m.sla_hours,
                ),
            )
        for li in policy.listings:
            conn.execute(
                """
                INSERT INTO listings (listing_id, maker_id, title, asking_price_cents, currency, status, updated_at)
                VALUES (%s, %s, %s, %s, %s, %s, now())
                ON CONFLICT (listing_id) DO UPDATE SET
                    maker_id = EXCLUDED.maker_id, title = EXCLUDED.title,
                    asking_price_cents = EXCLUDED.asking_price_cents, currency = EXCLUDED.currency,
                    status = EXCLUDED.status, updated_at = now()
                """,
                (li.listing_id, li.maker_id, li.title, li.asking_price_cents, li.currency, li.status),
            )
        return len(policy.makers), len(policy.listings)

    def invalidate(self) -> None:
        if self.redis is not None:
            self.redis.delete(self.cache_key)

    def forget(self, listing_id: str) -> None:
        """Drop one listing's cache entry (it carries its maker's policy): the next lookup reads it
        from Postgres. For a change to one listing, where ``invalidate`` would send every worker
        back to Postgres for every listing at once."""
        if self.redis is not None:
            self.redis.hdel(self.cache_key, listing_id)

    def lookup(self, db: Database | Connection, listing_id: str) -> ListingPolicy | None:
        """The listing with its maker's policy, from the cache or else Postgres: through ``db``'s pool,
        or through a connection the caller holds (its transaction)."""
        if self.redis is not None:
            cached = self.redis.hget(self.cache_key, listing_id)
            if cached:
                entry = json.loads(cached)
                # Each entry carries its age: staleness stays bounded should an invalidation be missed.
                if time.time() - entry["at"] < self.cache_seconds:
                    return ListingPolicy.model_validate(entry["policy"])
        if isinstance(db, psycopg.Connection):
            found = self._from_db(db, listing_id)
        else:
            with db.transaction() as conn:
                found = self._from_db(conn, listing_id)
        if found is not None and self.redis is not None:
            entry = {"at": time.time(), "policy": found.model_dump(mode="json")}
            self.redis.hset(self.cache_key, listing_id, json.dumps(entry))
        return found

    @staticmethod
    def _from_db(conn: Connection, listing_id: str) -> ListingPolicy | None:
        row = conn.execute(
            """
            SELECT l.listing_id, l.maker_id, l.title, l.asking_price_cents, l.currency, l.status,
                   m.display_name, m.min_offer_cents, m.auto_reject_below_pct, m.accepts_bank_payments, m.sla_hours
            FROM listings l JOIN makers m USING (maker_id)
            WHERE l.listing_id = %s
            """,
            (listing_id,),
        ).fetchone()
        if row is None:
            return None
        return ListingPolicy(
            listing=Listing(**_pick(row, Listing)),
            maker=MakerPolicy(**_pick(row, MakerPolicy)),
        )


def _pick(row: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    values = {k: row[k] for k in model.model_fields if k in row}
    if "currency" in values:
        values["currency"] = values["currency"].strip()
    return values


def is_synthetic_maker(conn: Connection, maker_id: str) -> bool:
    """Whether the maker was made by the synthetic journey (a policy file cannot mark one)."""
    row = conn.execute("SELECT synthetic FROM makers WHERE maker_id = %s", (maker_id,)).fetchone()
    return bool(row and row["synthetic"])


@dataclass(frozen=True)
class SyntheticPolicy:
    """What ``ensure_synthetic_policy`` changed, and whose the listing is."""

    maker_changed: bool
    listing_changed: bool
    #: The maker the listing belongs to (another's when an operator pointed the journey at a real listing).
    listing_maker_id: str


def ensure_synthetic_policy(
    conn: Connection,
    *,
    maker_id: str,
    maker_name: str,
    listing_id: str,
    listing_title: str,
    amount_cents: int,
    currency: str,
) -> SyntheticPolicy:
    """Make the synthetic journey's maker and listing, or bring synthetic ones back to what it needs.

    Idempotent and safe when two journeys run at once (``INSERT … ON CONFLICT`` on the primary
    keys; the second waits for the first's row, then finds it). Rows not marked synthetic are real
    ones an operator pointed the journey at: never changed.
    """
    maker_changed = conn.execute(
        """
        INSERT INTO makers AS m (maker_id, display_name, min_offer_cents, auto_reject_below_pct, synthetic)
        VALUES (%(maker)s, %(name)s, 1, 0, true)
        ON CONFLICT (maker_id) DO UPDATE SET min_offer_cents = 1, auto_reject_below_pct = 0, updated_at = now()
        WHERE m.synthetic AND (m.min_offer_cents, m.auto_reject_below_pct) IS DISTINCT FROM (1, 0)
        RETURNING maker_id
        """,
        {"maker": maker_id, "name": maker_name},
    ).fetchone()
    listing_changed = conn.execute(
        """
        INSERT INTO listings AS l (listing_id, maker_id, title, asking_price_cents, currency, status, synthetic)
        VALUES (%(listing)s, %(maker)s, %(title)s, %(amount)s, %(currency)s, 'active', true)
        ON CONFLICT (listing_id) DO UPDATE SET
            asking_price_cents = EXCLUDED.asking_price_cents, currency = EXCLUDED.currency,
            status = EXCLUDED.status, updated_at = now()
        WHERE l.synthetic AND l.maker_id = EXCLUDED.maker_id
          AND (l.asking_price_cents, l.currency, l.status)
              IS DISTINCT FROM (EXCLUDED.asking_price_cents, EXCLUDED.currency, EXCLUDED.status)
        RETURNING listing_id
        """,
        {
            "listing": listing_id,
            "maker": maker_id,
            "title": listing_title,
            "amount": amount_cents,
            "currency": currency,
        },
    ).fetchone()
    listing = one_row(conn.execute("SELECT maker_id FROM listings WHERE listing_id = %s", (listing_id,)))
    return SyntheticPolicy(maker_changed is not None, listing_changed is not None, listing["maker_id"])
