"""Listings the operator CLI prints: every matching row, or one page that says where it stopped.

A listing is a query and a total order: its sort key ends in a unique column, so the key of a
page's last row (the cursor) says exactly where the next page starts. Pages never skip or repeat a
row, however many rows share a timestamp, and a late page costs what the first one does.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic

from psycopg import sql
from psycopg.rows import dict_row

from offers_workers.store.audit_exports import ExportJob
from offers_workers.store.cancel_requests import Request
from offers_workers.store.db import Connection, Database, Row, fields_row, one_row
from offers_workers.store.dead_letters import ENTRIES, Entry
from offers_workers.store.intake_rejections import RejectionRecord
from offers_workers.store.offers import Holding, OfferRecord

#: Rows fetched per round trip when a whole listing is streamed.
BATCH = 2000
#: A cursor is urlsafe base64 (without padding); a real one is well under this length.
CURSOR = re.compile(r"[A-Za-z0-9_-]{1,1000}")
#: The Postgres type a cursor value is compared as, by its Python type.
SQL_TYPE = {datetime: sql.SQL("timestamptz"), int: sql.SQL("bigint"), str: sql.SQL("text")}


class BadCursor(ValueError):
    """A value given to --after that is not a cursor of this listing."""


@dataclass(frozen=True)
class Key:
    """One column of a listing's sort key."""

    column: str
    kind: type
    #: What NULL sorts as, for a nullable column: a NULL would make the row comparison unknown.
    null_as: sql.Composable | None = None

    def sorted_as(self, value: sql.Composable) -> sql.Composable:
        return value if self.null_as is None else sql.SQL("coalesce({}, {})").format(value, self.null_as)


@dataclass(frozen=True)
class Listing(Generic[Row]):
    #: Carried in its cursors, so a cursor of one listing is refused by another.
    name: str
    #: SELECT … FROM … [WHERE …] with named parameters and no ORDER BY; it selects every key column.
    query: sql.Composable
    #: The sort key; its last column is unique, which makes the order total.
    key: tuple[Key, ...]
    #: What one row is read as: a dataclass with a field for every key column (``db.fields_row``).
    row: type[Row]
    descending: bool = False

    def key_of(self, row: Row) -> tuple[Any, ...]:
        """The row's sort key: where a page that ends with it says the next one starts."""
        return tuple(getattr(row, k.column) for k in self.key)


@dataclass(frozen=True)
class Page(Generic[Row]):
    rows: list[Row]
    #: Where the next page starts; None when no row matches after this page.
    next_cursor: str | None
    #: How many rows match after this page (None when not counted).
    more: int | None


def encode_cursor(listing: Listing[Row], row: Row) -> str:
    values = [v.isoformat() if isinstance(v, datetime) else v for v in listing.key_of(row)]
    text = json.dumps({"listing": listing.name, "after": values}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(listing: Listing[Any], cursor: str) -> tuple[Any, ...]:
    """The sort key a cursor holds, checked against the listing's key; BadCursor if it is not one."""
    if not CURSOR.fullmatch(cursor):
        raise BadCursor("not a cursor (use the next_cursor a page printed)")
    try:
        found = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise BadCursor("not a cursor (use the next_cursor a page printed)") from None
    if not isinstance(found, dict) or not isinstance(found.get("after"), list):
        raise BadCursor("not a cursor (use the next_cursor a page printed)")
    if found.get("listing") != listing.name:
        raise BadCursor("a cursor of another listing")
    if len(found["after"]) != len(listing.key):
        raise BadCursor("not a cursor of this listing")
    return tuple(_key_value(k, v) for k, v in zip(listing.key, found["after"], strict=False))


def _key_value(key: Key, value: Any) -> Any:
    if value is None and key.null_as is not None:
        return None
    if key.kind is datetime and isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise BadCursor("not a cursor of this listing") from None
        if moment.tzinfo is not None:
            return moment
    elif isinstance(value, key.kind) and not isinstance(value, bool):
        return value
    raise BadCursor("not a cursor of this listing")


def _after(listing: Listing[Any], after: tuple[Any, ...] | None) -> tuple[sql.Composable, dict[str, Any]]:
    """The rows past ``after`` in the listing's order, as a row comparison (Postgres reads it off an index)."""
    if after is None:
        return sql.SQL("TRUE"), {}
    ours = [k.sorted_as(sql.Identifier(k.column)) for k in listing.key]
    given = [
        k.sorted_as(sql.SQL("{}::{}").format(sql.Placeholder(f"after_{i}"), SQL_TYPE[k.kind]))
        for i, k in enumerate(listing.key)
    ]
    condition = sql.SQL("({}) {} ({})").format(
        sql.SQL(", ").join(ours), sql.SQL("<" if listing.descending else ">"), sql.SQL(", ").join(given)
    )
    return condition, {f"after_{i}": value for i, value in enumerate(after)}


def _select(listing: Listing[Any], where: sql.Composable) -> sql.Composed:
    direction = sql.SQL(" DESC" if listing.descending else "")
    order = sql.SQL(", ").join(sql.Composed([k.sorted_as(sql.Identifier(k.column)), direction]) for k in listing.key)
    return sql.SQL("SELECT * FROM ({}) AS listed WHERE {} ORDER BY {}").format(listing.query, where, order)


def stream(db: Database, listing: Listing[Row], params: dict[str, Any]) -> Iterator[Row]:
    """Every matching row, BATCH rows at a time, each batch read after the last one's key in a short
    transaction of its own: memory stays flat however many rows match, and a reader that pauses (a
    pager left open) holds no transaction, which Postgres would end after
    OFFERS_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS and which would hold back a migration meanwhile.
    No row present at the start is skipped or repeated.
    """
    after: tuple[Any, ...] | None = None
    while True:
        with db.transaction() as conn:
            page = read_page(conn, listing, params, limit=BATCH, after=after)
        yield from page.rows
        if page.next_cursor is None:
            return
        after = listing.key_of(page.rows[-1])


def read_page(
    conn: Connection,
    listing: Listing[Row],
    params: dict[str, Any],
    *,
    limit: int,
    after: tuple[Any, ...] | None = None,
    count_more: bool = False,
) -> Page[Row]:
    """Up to ``limit`` rows after the cursor ``after``; with ``count_more``, how many match past them.

    Call it first in its transaction: the page and the count then read one snapshot.
    """
    if count_more:
        # "N more" is exact for the page printed: rows committed in between are in neither or both.
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    where, after_params = _after(listing, after)
    query = sql.SQL("{} LIMIT {}").format(_select(listing, where), sql.Placeholder("page_rows"))
    # One row past the page says whether more follow, without counting them.
    page_params = {**params, **after_params, "page_rows": limit + 1}
    rows = conn.cursor(row_factory=fields_row(listing.row)).execute(query, page_params).fetchall()
    if len(rows) <= limit:
        return Page(rows, None, 0)
    rows = rows[:limit]
    more = None
    if count_more:
        last = listing.key_of(rows[-1])
        where, after_params = _after(listing, last)
        count = sql.SQL("SELECT count(*) AS n FROM ({}) AS listed WHERE {}").format(listing.query, where)
        more = one_row(conn.cursor(row_factory=dict_row).execute(count, {**params, **after_params}))["n"]
    return Page(rows, encode_cursor(listing, rows[-1]), more)


# --- the listings the CLI prints ------------------------------------------------------------------

#: `offers list`: offers, newest first, of a state (or any) received since a time (or ever).
OFFERS = Listing(
    "offers",
    sql.SQL(
        "SELECT * FROM offers WHERE (%(state)s::text IS NULL OR state = %(state)s)"
        " AND (%(since)s::timestamptz IS NULL OR received_at >= %(since)s)"
    ),
    key=(Key("received_at", datetime), Key("offer_id", str)),
    row=OfferRecord,
    descending=True,
)

#: `intake rejections`: newest first, received since a time (or ever), of one reason (or any).
INTAKE_REJECTIONS = Listing(
    "intake_rejections",
    sql.SQL(
        "SELECT id, received_at, task_id, offer_id, reason, errors, raw_size, raw_body FROM intake_rejections"
        " WHERE (%(since)s::timestamptz IS NULL OR received_at >= %(since)s)"
        " AND (%(reason)s::text IS NULL OR reason = %(reason)s)"
    ),
    key=(Key("id", int),),
    row=RejectionRecord,
    descending=True,
)

#: `cancel-requests list`: what each cancel did, newest first; of one offer, or of one outcome.
CANCEL_REQUESTS = Listing(
    "cancel_requests",
    sql.SQL(
        "SELECT id, received_at, offer_id, reason, actor, outcome, errors, applied_at FROM cancel_requests"
        " WHERE (%(offer_id)s::text IS NULL OR offer_id = %(offer_id)s)"
        " AND (%(outcome)s::text IS NULL OR outcome = %(outcome)s)"
        " AND (%(since)s::timestamptz IS NULL OR received_at >= %(since)s)"
    ),
    key=(Key("id", int),),
    row=Request,
    descending=True,
)

#: `dlq list`: entries of a stage (or every stage) in a status (or any), oldest first.
DEAD_LETTERS = Listing("dead_letters", ENTRIES, key=(Key("id", int),), row=Entry)

#: `holds list` and `holds release`: offers holding an authorization, oldest hold first; of one offer,
#: only dead-lettered ones, or only holds placed before a time, when asked.
HOLDS = Listing(
    "holds",
    sql.SQL(
        "SELECT offer_id, state, reason, payment_intent_id, amount_cents, currency, payment_held_at, updated_at"
        " FROM offers WHERE hold_status = 'held'"
        " AND (%(offer_id)s::text IS NULL OR offer_id = %(offer_id)s)"
        " AND (NOT %(dead_lettered)s OR state = 'dead_lettered')"
        " AND (%(older_than)s::timestamptz IS NULL OR payment_held_at < %(older_than)s)"
    ),
    # A hold placed while its offer was cancelled has no payment_held_at (its transition lost): it sorts last.
    key=(
        Key("payment_held_at", datetime, null_as=sql.SQL("'infinity'::timestamptz")),
        Key("offer_id", str),
    ),
    row=Holding,
)

#: `audit exports`: export jobs, newest first.
AUDIT_EXPORTS = Listing(
    "audit_exports", sql.SQL("SELECT * FROM audit_exports"), key=(Key("id", int),), row=ExportJob, descending=True
)
