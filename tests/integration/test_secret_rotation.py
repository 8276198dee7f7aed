"""Rotating OFFERS_PAYMENT_SECRET_KEYS as the README says: put the new key first, run
`offers-workers secrets rotate`, drop the old key. Run by the fleet's own login, on its own database."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg.rows import dict_row

from config.settings import load_settings
from offers_workers.domain.payload import parse_offer
from offers_workers.local.samples import bank, base_offer
from offers_workers.runtime import Runtime
from offers_workers.store.offers import insert_offer
from tests.conftest import cli

OLD = "old=" + "o" * 40
NEW = "new=" + "n" * 40
TOKEN = "access-sandbox-rotation-canary"


def _stored(url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT offer_id, payload->'payment' AS payment FROM offers ORDER BY offer_id").fetchall()
    return {r["offer_id"]: r["payment"] for r in rows}


def test_rotation_reseals_every_kept_token_under_the_new_key_and_the_old_key_can_go(
    scratch_runtime: str, offers_env: dict[str, str]
) -> None:
    # Given two bank offers sealed under the old key, and one stored before sealing (in clear)
    rt = Runtime(load_settings(database_url=scratch_runtime, payment_secret_keys=OLD, sandbox=True))
    try:
        with rt.db.transaction() as conn:
            for n in (1, 2):
                raw = {**base_offer(f"off_rot_{n}", n), "payment": bank(TOKEN)}
                assert insert_offer(conn, parse_offer(raw), raw, actor="test", keys=rt.settings.payment_keys)
    finally:
        rt.close()
    legacy = {**base_offer("off_rot_3", 3), "payment": bank(TOKEN)}
    with psycopg.connect(scratch_runtime, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO offers (offer_id, listing_id, buyer_id, maker_id, amount_cents, currency, payment_method,"
            " payload, body_sha256, state)"
            " SELECT 'off_rot_3', listing_id, buyer_id, maker_id, amount_cents, currency, payment_method,"
            " jsonb_set(payload, '{payment}', %s::jsonb), body_sha256 || '3', state FROM offers WHERE offer_id = 'off_rot_1'",
            (json.dumps(legacy["payment"]),),
        )
    before = _stored(scratch_runtime)
    assert all(p["plaid_access_token"].startswith("enc:v1:old:") for k, p in before.items() if k != "off_rot_3")

    # When the new key goes first and rotate runs (twice: safe to repeat)
    env = {"OFFERS_DATABASE_URL": scratch_runtime, "OFFERS_PAYMENT_SECRET_KEYS": f"{NEW},{OLD}"}
    first = cli("secrets", "rotate", "--json", env=env)
    again = cli("secrets", "rotate", "--json", env=env)

    # Then every kept token is sealed under the new key, and the new key alone opens it
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"key": "new", "offers": 3, "dead_letters": 0, "key_missing": 0}
    assert json.loads(again.stdout)["offers"] == 0
    after = _stored(scratch_runtime)
    new_only = load_settings(payment_secret_keys=NEW, sandbox=True).payment_keys
    for payment in after.values():
        assert payment["plaid_access_token"].startswith("enc:v1:new:")
        assert new_only.open(payment["plaid_access_token"]) == TOKEN
        assert new_only.open(payment["plaid_account_id"]) == "acc_checking_1"
    assert TOKEN not in first.stdout + first.stderr + again.stdout

    # And a token sealed under a key nobody lists any more is named, not lost: exit 1
    gone = cli("secrets", "rotate", "--json", env={**env, "OFFERS_PAYMENT_SECRET_KEYS": OLD})
    assert gone.returncode == 1
    assert "3 kept secret(s) are sealed with a key not in OFFERS_PAYMENT_SECRET_KEYS" in gone.stderr
    assert _stored(scratch_runtime) == after
