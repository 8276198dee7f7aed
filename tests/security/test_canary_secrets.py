"""Payment secrets are kept nowhere and shown nowhere: canary Plaid tokens and account ids go through
every path a message can take (an offer through the saga, a rejection, an unreadable message, a
duplicate conflict, a dead letter of a stage and of intake, both replayed from the CLI), every
command that shows those records runs, the audit trail is exported to S3; then no canary is in any
CLI output, worker log line, text or JSON column of any table, or exported object. The saga still
gets the real token where it calls Plaid: each offer reaches its expected state.
"""

from __future__ import annotations

import gzip
import json
import secrets
import tempfile
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from offers_workers.domain import states
from offers_workers.local.samples import base_offer
from offers_workers.local.sandbox import clear_faults, set_fault
from offers_workers.saga import deadletter
from tests.conftest import RUN_ID, SERVER, cli, wait_until
from tests.drillkit import drill
from tests.security.test_wire_abuse import publish

#: Each canary holds this run's marker: a scan for the marker finds every canary, and any piece of one.
MARKER = f"cnry{secrets.token_hex(5)}"
#: A key ring of the fleet's own (not the sandbox's), two keys: the first seals, both open.
PAYMENT_KEYS = f"pay-new={secrets.token_urlsafe(32)},pay-old={secrets.token_urlsafe(32)}"


def bank(offer_id: str, n: int, tag: str) -> dict[str, Any]:
    """A bank-account offer whose Plaid token and account id are canaries (the Plaid sandbox takes any
    ``access-…`` token: a balance of 50,000 and a low return risk)."""
    offer = base_offer(offer_id, n)
    offer["payment"] = {
        "method": "bank_account",
        "plaid_access_token": f"access-production-{MARKER}-{tag}-token",
        "plaid_account_id": f"acct-{MARKER}-{tag}",
    }
    return offer


def states_of(runtime: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    with runtime.db.transaction() as conn:
        rows = conn.execute(
            "SELECT offer_id, state, reason, return_risk_score FROM offers WHERE offer_id = ANY(%s)", (ids,)
        ).fetchall()
    return {r["offer_id"]: r for r in rows}


def dead_letter_of(runtime: Any, offer_id: str) -> dict[str, Any] | None:
    with runtime.db.transaction() as conn:
        return conn.execute(
            "SELECT id, status FROM dead_letters WHERE offer_id = %s ORDER BY id DESC LIMIT 1", (offer_id,)
        ).fetchone()


def rejections(runtime: Any, prefix: str) -> list[str]:
    """The reasons of the run's intake rejections (the unreadable one has no offer id, only its raw body)."""
    with runtime.db.transaction() as conn:
        rows = conn.execute(
            "SELECT reason FROM intake_rejections WHERE offer_id LIKE %s OR raw_body LIKE %s",
            (f"{prefix}%", f"%{prefix}%"),
        ).fetchall()
    return [r["reason"] for r in rows]


def tables_holding(marker: str) -> list[str]:
    """Every ``table.column`` (text, JSON, bytes) of the run's database holding ``marker``, read as its owner."""
    found = []
    with psycopg.connect(SERVER["owner"], autocommit=True) as conn:
        columns = conn.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns c"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            " AND data_type IN ('text', 'jsonb', 'json', 'character varying', 'character', 'bytea', 'ARRAY')"
            " AND EXISTS (SELECT 1 FROM information_schema.tables t WHERE t.table_schema = c.table_schema"
            "   AND t.table_name = c.table_name AND t.table_type = 'BASE TABLE')"
        ).fetchall()
        for schema, table, column in columns:
            query = sql.SQL("SELECT 1 FROM {} WHERE strpos({}::text, %s) > 0 LIMIT 1").format(
                sql.Identifier(schema, table), sql.Identifier(column)
            )
            if conn.execute(query, (marker,)).fetchone():
                found.append(f"{table}.{column}")
    return found


def exported_objects(runtime: Any) -> list[str]:
    """The text of every object the audit export wrote for this database (restored from Glacier)."""
    from offers_workers.saga.trail import keyspace

    archive = runtime.archive
    texts = []
    for history in archive.histories(keyspace(runtime)):
        if history.key.endswith(".jsonl.gz"):
            archive.restore(history.key, timeout_s=60, poll_s=0.2)
            with tempfile.TemporaryFile() as spool:
                archive.download(history.key, spool)
                spool.seek(0)
                texts.append(gzip.decompress(spool.read()).decode())
        else:
            texts.append(archive.read(history.key).decode())
    return texts


def test_no_canary_secret_is_kept_or_shown_anywhere(offers_env, sandbox, tmp_path: Path) -> None:
    prefix = f"cnr_{RUN_ID}_{secrets.token_hex(2)}"
    good, fault, intake_dl = (f"{prefix}_{n}" for n in ("good", "fault", "intake"))
    outputs: list[tuple[str, str]] = []

    def run(*args: str) -> Any:
        result = cli(*args, env=d.env)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        outputs.append((" ".join(args), result.stdout + result.stderr))
        return result

    overrides = {"OFFERS_PAYMENT_SECRET_KEYS": PAYMENT_KEYS, "OFFERS_RETRY_DELAY_SCALE": "0.001"}
    with drill("canary", offers_env, tmp_path / "logs", **overrides) as d:
        send = d.app.send_task
        # An offer through the whole saga, and a second body under its id (a duplicate conflict)
        send("offers.submit", kwargs={"offer": bank(good, 1, "good")})
        wait_until(lambda: states_of(d.runtime, [good]).get(good, {}).get("state") == states.SUBMITTED, timeout=30)
        send("offers.submit", kwargs={"offer": {**bank(good, 1, "good"), "amount_cents": 15100}})
        # An invalid offer (its canaries in the raw body kept), and a message that is not JSON at all
        send("offers.submit", kwargs={"offer": {**bank(f"{prefix}_bad", 2, "invalid"), "amount_cents": -1}})
        unreadable = json.dumps({"offer": bank(f"{prefix}_unreadable", 3, "unreadable")})
        publish(d.app, f"[[], {unreadable[:-1]}".encode())
        # A stage dead-lettered by a Plaid outage, replayed once Plaid is back
        set_fault(sandbox, "plaid", status=503, rate=1.0)
        try:
            send("offers.submit", kwargs={"offer": bank(fault, 4, "fault")})
            wait_until(lambda: dead_letter_of(d.runtime, fault), timeout=30, message="the Plaid outage's dead letter")
        finally:
            clear_faults(sandbox, "plaid")
        # An offers.submit dead-lettered as the fleet does it (a poison message), whose kwargs hold the offer
        error = RuntimeError("the worker died each time")
        deadletter.record(
            d.runtime,
            stage="intake",
            task_name="offers.submit",
            kwargs={"offer": bank(intake_dl, 5, "intake")},
            error=error,
            traceback_text="".join(traceback.format_exception(error)),
            attempts=3,
            from_state=None,
        )
        wait_until(lambda: len(rejections(d.runtime, prefix)) == 3, timeout=30, message="three rejections")
        entries = {oid: dead_letter_of(d.runtime, oid) for oid in (fault, intake_dl)}

        # Every command that shows these records
        run("offers", "show", good)
        run("offers", "show", good, "--json")
        run("offers", "show", fault, "--json")
        run("offers", "list", "--json")
        run("offers", "list")
        run("intake", "rejections", "--json")
        run("intake", "rejections")
        run("dlq", "list", "--all", "--json")
        run("dlq", "list", "--all")
        for entry in entries.values():
            assert entry is not None
            run("dlq", "show", str(entry["id"]), "--json")
            run("dlq", "show", str(entry["id"]))
            run("dlq", "replay", str(entry["id"]))
        # The replays reach Plaid with the real tokens: both offers go through
        ids = [good, fault, intake_dl]
        wait_until(
            lambda: (
                {r["state"] for r in states_of(d.runtime, ids).values()} == {states.SUBMITTED}
                and len(states_of(d.runtime, ids)) == 3
            ),
            timeout=30,
            message="every canary offer to be submitted",
        )
        assert all(r["return_risk_score"] is not None for r in states_of(d.runtime, ids).values())
        assert sorted(rejections(d.runtime, prefix)) == ["duplicate_conflict", "invalid_payload", "invalid_payload"]
        run("dlq", "list", "--all", "--json")
        run("audit", "seal")
        run("audit", "export", "--until", (datetime.now(UTC) + timedelta(seconds=1)).isoformat())
        run("audit", "exports", "--json")
        exported = exported_objects(d.runtime)
        assert exported, "the audit export wrote nothing"
        logs = {p.name: p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*.log")}

    leaks = [f"output of `{args}`" for args, text in outputs if MARKER in text]
    leaks += [f"log {name}" for name, text in logs.items() if MARKER in text]
    leaks += [f"table column {c}" for c in tables_holding(MARKER)]
    leaks += [f"exported object {n}" for n, text in enumerate(exported) if MARKER in text]
    assert leaks == [], "canary secrets found in:\n  " + "\n  ".join(leaks)
