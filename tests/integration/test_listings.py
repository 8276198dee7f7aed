"""Listings as a script reads them: every row, or a page that says it stopped and where to go on."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.conftest import cli, project_root

# The run's environment (sandbox settings and the like); each test points the CLI at a database of its own.
pytestmark = pytest.mark.usefixtures("offers_env")

#: One moment shared by many rows: pages must neither skip nor repeat rows that tie on it.
TIED = "2026-03-01T12:00:00+00:00"


def add_offers(
    url: str,
    count: int,
    *,
    prefix: str = "off",
    received_at: str | None = None,
    held: bool = False,
    held_at: str | None = None,
) -> None:
    """``count`` offers in one statement, received a second apart unless they share ``received_at``."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO offers (offer_id, listing_id, maker_id, buyer_id, amount_cents, currency, payment_method, payload,"
            "  body_sha256, state, received_at, hold_status, payment_intent_id, payment_held_at)"
            " SELECT %(prefix)s || '_' || lpad(n::text, 6, '0'), 'lst_1', 'mkr_1', 'usr_' || n, 1000 + n, 'USD', 'card',"
            "  '{}'::jsonb, md5(n::text), 'submitted',"
            "  coalesce(%(received_at)s::timestamptz, timestamptz '2026-01-01' + n * interval '1 second'),"
            "  CASE WHEN %(held)s THEN 'held' ELSE 'none' END, CASE WHEN %(held)s THEN 'pi_' || n END, %(held_at)s::timestamptz"
            " FROM generate_series(1, %(count)s) AS n",
            {"prefix": prefix, "count": count, "received_at": received_at, "held": held, "held_at": held_at},
        )


def tied_rows(insert_select: str) -> Callable[[str, int], None]:
    """A filler for one table: ``insert_select`` run over ``n`` = 1 … count, every row at the moment TIED (``%(at)s``)."""

    def add(url: str, count: int) -> None:
        with psycopg.connect(url) as conn:
            conn.execute(insert_select + " FROM generate_series(1, %(count)s) AS n", {"count": count, "at": TIED})

    return add


add_rejections = tied_rows(
    "INSERT INTO intake_rejections (offer_id, reason, errors, raw_body, raw_size, received_at)"
    " SELECT 'rej_' || n, 'invalid_payload', '[{\"field\": \"amount_cents\", \"code\": \"too_small\"}]'::jsonb, '{}', 2,"
    "  %(at)s::timestamptz"
)
add_cancel_requests = tied_rows(
    "INSERT INTO cancel_requests (offer_id, reason, actor, outcome, received_at)"
    " SELECT 'cxl_' || n, 'buyer_withdrew', 'buyer', CASE WHEN n %% 2 = 0 THEN 'tombstone' ELSE 'cancelled' END,"
    "  %(at)s::timestamptz"
)
add_dead_letters = tied_rows(
    "INSERT INTO dead_letters (stage, task_name, offer_id, kwargs, error_type, error_message, attempts,"
    "  first_failed_at, last_failed_at)"
    " SELECT 'risk', 'offers.clear_risk', 'dl_' || n, '{}'::jsonb, 'TransientError', 'sift timed out', 17, %(at)s, %(at)s"
)
add_audit_exports = tied_rows(
    "INSERT INTO audit_exports (until, first_row_id, last_row_id, row_count, object_key, manifest_key, storage_class, status)"
    " SELECT %(at)s, n * 10, n * 10 + 9, 10, 'audit/' || n || '.jsonl.gz', 'audit/' || n || '.manifest.json', 'GLACIER', 'done'"
)


def add_holds(url: str, count: int) -> None:
    # Most holds placed at the same moment, a few without payment_held_at (they sort last)
    add_offers(url, count - 3, prefix="hold", held=True, held_at=TIED)
    add_offers(url, 3, prefix="nohold", held=True)


def db_env(url: str) -> dict[str, str]:
    return {"OFFERS_DATABASE_URL": url}


def listed(url: str, *args: str) -> Any:
    result = cli(*args, "--json", env=db_env(url))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


#: Each listing: its command, how to fill it, and what names a row.
LISTINGS: dict[str, tuple[tuple[str, ...], Callable[[str, int], None], str]] = {
    "offers": (("offers", "list"), lambda url, n: add_offers(url, n, received_at=TIED), "offer_id"),
    "intake rejections": (("intake", "rejections"), add_rejections, "id"),
    "dead letters": (("dlq", "list"), add_dead_letters, "id"),
    "cancel requests": (("cancel-requests", "list"), add_cancel_requests, "id"),
    "holds": (("holds", "list"), add_holds, "offer_id"),
    "audit exports": (("audit", "exports"), add_audit_exports, "id"),
}


def test_offers_list_json_returns_every_matching_offer_newest_first(scratch_database: str) -> None:
    add_offers(scratch_database, 250)
    offers = listed(scratch_database, "offers", "list")
    assert isinstance(offers, list) and len(offers) == 250
    assert [o["offer_id"] for o in offers] == [f"off_{n:06d}" for n in range(250, 0, -1)]
    # the objects of `offers show --json`
    assert {"offer_id", "state", "reason", "amount_cents", "currency", "payment_intent_id", "received_at"} <= set(
        offers[0]
    )
    # and the filters still apply
    assert listed(scratch_database, "offers", "list", "--state", "rejected") == []


def test_intake_rejections_json_returns_every_rejection(scratch_database: str) -> None:
    add_rejections(scratch_database, 150)
    rejections = listed(scratch_database, "intake", "rejections")
    assert isinstance(rejections, list) and len(rejections) == 150
    ids = [r["id"] for r in rejections]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 150
    assert rejections[0]["errors"][0]["field"] == "amount_cents"


@pytest.mark.parametrize("name", list(LISTINGS))
def test_pages_yield_every_row_once_in_order(scratch_database: str, name: str) -> None:
    command, fill, identity = LISTINGS[name]
    fill(scratch_database, 250)
    everything = [row[identity] for row in listed(scratch_database, *command)]
    assert len(everything) == len(set(everything)) == 250

    # When a script pages through with --limit 100 and --after next_cursor
    seen, pages, cursor = [], [], None
    while True:
        page = listed(scratch_database, *command, "--limit", "100", *(("--after", cursor) if cursor else ()))
        assert set(page) == {"items", "truncated", "next_cursor"}
        pages.append(page)
        seen += [row[identity] for row in page["items"]]
        if not page["truncated"]:
            break
        cursor = page["next_cursor"]
        assert isinstance(cursor, str) and cursor

    # Then it sees every row exactly once, in the listing's order, and knows it reached the end
    assert seen == everything
    assert [len(p["items"]) for p in pages] == [100, 100, 50]
    assert [p["truncated"] for p in pages] == [True, True, False]
    assert pages[-1]["next_cursor"] is None


def test_cancel_requests_list_filters_by_offer_and_outcome(scratch_database: str) -> None:
    add_cancel_requests(scratch_database, 10)
    assert [r["offer_id"] for r in listed(scratch_database, "cancel-requests", "list", "--offer", "cxl_3")] == ["cxl_3"]
    tombstones = listed(scratch_database, "cancel-requests", "list", "--outcome", "tombstone")
    assert sorted(r["offer_id"] for r in tombstones) == sorted(f"cxl_{n}" for n in (2, 4, 6, 8, 10))
    assert {(r["reason"], r["actor"], r["outcome"]) for r in tombstones} == {("buyer_withdrew", "buyer", "tombstone")}


def test_after_alone_asks_for_a_page_of_100(scratch_database: str) -> None:
    add_offers(scratch_database, 250)
    first = listed(scratch_database, "offers", "list", "--limit", "20")
    page = listed(scratch_database, "offers", "list", "--after", first["next_cursor"])
    assert [o["offer_id"] for o in page["items"]] == [f"off_{n:06d}" for n in range(230, 130, -1)]
    assert page["truncated"] is True


def test_a_page_that_holds_every_row_says_so(scratch_database: str) -> None:
    add_offers(scratch_database, 5)
    page = listed(scratch_database, "offers", "list", "--limit", "5")
    assert (len(page["items"]), page["truncated"], page["next_cursor"]) == (5, False, None)
    assert listed(scratch_database, "audit", "exports", "--limit", "10") == {
        "items": [],
        "truncated": False,
        "next_cursor": None,
    }


MORE = re.compile(r"^… ([\d,]+) more; use --limit/--after (\S+)$")


def last_line(result: Any) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.rstrip("\n").splitlines()[-1]


def test_a_table_says_how_many_more_match_and_where_to_go_on(scratch_database: str) -> None:
    add_offers(scratch_database, 130, received_at=TIED)
    add_offers(scratch_database, 120, prefix="new")
    env = db_env(scratch_database)

    # 100 rows by default, then the exact count of the rest and the cursor to continue from
    more = MORE.match(last_line(cli("offers", "list", env=env)))
    assert more and more[1] == "150"
    rest = listed(scratch_database, "offers", "list", "--after", more[2], "--limit", "1000")
    assert len(rest["items"]) == 150 and rest["truncated"] is False

    more = MORE.match(last_line(cli("offers", "list", "--limit", "240", env=env)))
    assert more and more[1] == "10"
    # the same with a filter: the count is of the rows that match
    assert MORE.match(last_line(cli("offers", "list", "--state", "submitted", "--limit", "249", env=env)))[1] == "1"

    # no such line when every row is shown
    for args in (("--limit", "250"), ("--limit", "1000"), ("--state", "rejected")):
        result = cli("offers", "list", *args, env=env)
        assert "more; use" not in result.stdout, args


def test_a_short_table_has_no_more_line(scratch_database: str) -> None:
    add_rejections(scratch_database, 60)
    result = cli("intake", "rejections", env=db_env(scratch_database))
    assert result.returncode == 0, result.stderr
    assert "60 intake rejection(s)" in result.stdout and "more; use" not in result.stdout


def cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


MALFORMED = [
    "not a cursor!",
    "bm90IGpzb24",  # base64 of "not json"
    cursor_of(["2026-03-01T12:00:00+00:00", "off_1"]),
    cursor_of({"listing": "offers", "after": [1, 2]}),
    cursor_of({"listing": "offers", "after": ["yesterday", "off_1"]}),
    cursor_of({"listing": "offers", "after": ["2026-03-01T12:00:00", "off_1"]}),  # no time zone
    cursor_of({"listing": "offers", "after": ["2026-03-01T12:00:00+00:00"]}),
    cursor_of({"listing": "offers", "after": [None, "off_1"]}),
    "x" * 5000,
]


def test_a_malformed_after_is_a_usage_error_naming_it(scratch_database: str) -> None:
    outputs = (("--json",), ("--json", "--limit", "10"), ())
    for n, cursor in enumerate(MALFORMED):
        result = cli("offers", "list", "--after", cursor, *outputs[n % len(outputs)], env=db_env(scratch_database))
        assert result.returncode == 2, (cursor, result.stdout, result.stderr)
        assert "--after" in result.stderr and "Traceback" not in result.stderr, (cursor, result.stderr)
        assert result.stdout == ""


def test_a_cursor_of_one_listing_is_refused_by_another(scratch_database: str) -> None:
    add_rejections(scratch_database, 20)
    cursor = listed(scratch_database, "intake", "rejections", "--limit", "5")["next_cursor"]
    result = cli("audit", "exports", "--after", cursor, env=db_env(scratch_database))
    assert result.returncode == 2 and "--after" in result.stderr and "another listing" in result.stderr


def test_a_large_listing_streams_as_one_valid_json_array(scratch_database: str) -> None:
    add_offers(scratch_database, 20_000)
    started = time.monotonic()
    result = cli("offers", "list", "--json", env=db_env(scratch_database))
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    offers = json.loads(result.stdout)
    assert len(offers) == len({o["offer_id"] for o in offers}) == 20_000
    assert offers[0]["offer_id"] == "off_020000" and offers[-1]["offer_id"] == "off_000001"
    assert elapsed < 30, f"{elapsed:.1f} s for 20,000 offers"


def test_a_reader_that_pauses_mid_listing_still_gets_every_row(scratch_database: str) -> None:
    # Given a listing longer than one batch and a reader that stops reading for longer than
    # Postgres lets a session sit idle in a transaction (a pager left open)
    add_offers(scratch_database, 5_000)
    env = {**os.environ, **db_env(scratch_database), "OFFERS_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS": "1"}
    reader = subprocess.Popen(
        [sys.executable, "-m", "offers_workers.ops.cli", "offers", "list", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=project_root(),
        env=env,
    )
    try:
        first = reader.stdout.readline() + reader.stdout.readline()
        time.sleep(3)
        rest, errors = reader.stdout.read(), reader.stderr.read()
        reader.wait(60)
    finally:
        reader.kill()
    # Then the listing is whole: no transaction was left open while it waited
    assert reader.returncode == 0, errors
    offers = json.loads(first + rest)
    assert len({o["offer_id"] for o in offers}) == 5_000
