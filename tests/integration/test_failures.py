"""Partner outages end in durable dead letters that an operator replays or compensates from the CLI.

Real worker processes, real Postgres and Redis, the sandbox with injected faults.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta

import pytest

from offers_workers.domain import states
from offers_workers.local.sandbox import clear_faults, set_fault
from tests.conftest import DRILL_RESULTS, cli, cli_at_once, offer_rows, wait_until
from tests.outages import all_in, send_offers, through_sift_outage

pytestmark = pytest.mark.usefixtures("fleet")


def dead_letters(runtime, offer_ids: list[str]) -> list[dict]:
    with runtime.db.transaction() as conn:
        return conn.execute("SELECT * FROM dead_letters WHERE offer_id = ANY(%s) ORDER BY id", (offer_ids,)).fetchall()


def test_sift_outage_dead_letters_then_replay_submits_each_offer_once(celery_app, runtime, sandbox) -> None:
    # Given Sift answered 503 to everything: every offer ends dead-lettered at the risk stage
    # after its retries, its hold kept
    started = time.monotonic()
    ids = through_sift_outage(celery_app, runtime, sandbox, "outage", 100)
    dead_lettered_after = time.monotonic() - started
    assert {r["hold_status"] for r in offer_rows(runtime, ids).values()} == {"held"}
    entries = dead_letters(runtime, ids)
    assert len(entries) == len(ids)
    assert {(e["stage"], e["status"], e["error_type"]) for e in entries} == {("risk", "pending", "TransientError")}
    assert all(e["attempts"] == 17 for e in entries)  # the first try and sixteen retries

    # When the operator replays the risk queue (the fault cleared)
    listed = cli("dlq", "list", "--stage", "risk", "--json")
    assert listed.returncode == 0 and {e["offer_id"] for e in json.loads(listed.stdout)} >= set(ids)
    dry = cli("dlq", "replay", "--all", "--stage", "risk", "--dry-run")
    assert dry.returncode == 0 and "would replay" in dry.stdout
    assert all_in(runtime, ids, states.DEAD_LETTERED)
    pending = len(json.loads(listed.stdout))
    # from two terminals at once
    runs = cli_at_once("dlq", "replay", "--all", "--stage", "risk", timeout=120)
    assert [run.returncode for run in runs] == [0, 0], runs
    counts = [int(re.search(r"replayed (\d+) of", run.stdout).group(1)) for run in runs]
    assert sum(counts) == pending, runs  # each entry replayed by exactly one of them

    # Then every offer is submitted, with exactly one PaymentIntent each
    wait_until(lambda: all_in(runtime, ids, states.SUBMITTED), timeout=60, message="replayed offers to be submitted")
    holds = {}
    for pi in runtime.stripe.list_holds():
        if pi.offer_id in ids:
            holds.setdefault(pi.offer_id, []).append(pi.status)
    assert holds == {offer_id: ["requires_capture"] for offer_id in ids}
    assert {(e["status"], e["replay_count"]) for e in dead_letters(runtime, ids)} == {("replayed", 1)}
    DRILL_RESULTS.append(
        {
            "drill": "outage",
            "offers": len(ids),
            "lost": 0,
            "duplicate_holds": 0,
            "orphan_holds": 0,
            "faults": f"Sift 503 on every request; all dead-lettered in {dead_lettered_after:.1f} s, replayed from 2 terminals",
            "dead_lettered": f"{len(ids)} then 0",
            "drain_s": round(time.monotonic() - started, 1),
        }
    )

    # and replaying again changes nothing
    again = cli("dlq", "replay", str(entries[0]["id"]))
    assert again.returncode == 0 and "nothing to replay" in again.stdout
    assert {(e["status"], e["replay_count"]) for e in dead_letters(runtime, ids)} == {("replayed", 1)}


def test_a_replay_that_fails_again_returns_with_its_count_raised(celery_app, runtime, sandbox) -> None:
    set_fault(sandbox, "sift", status=503, rate=1.0)
    try:
        [offer_id] = send_offers(celery_app, "again", 1)
        wait_until(lambda: all_in(runtime, [offer_id], states.DEAD_LETTERED), timeout=60, message="dead letter")
        [entry] = dead_letters(runtime, [offer_id])
        assert cli("dlq", "replay", str(entry["id"])).returncode == 0
        wait_until(
            lambda: (
                dead_letters(runtime, [offer_id])[0]["status"] == "pending"
                and all_in(runtime, [offer_id], states.DEAD_LETTERED)
            ),
            timeout=60,
            message="the replay to fail again",
        )
    finally:
        clear_faults(sandbox, "sift")
    [back] = dead_letters(runtime, [offer_id])
    assert (back["id"], back["replay_count"], back["attempts"]) == (entry["id"], 1, 34)
    assert cli("dlq", "discard", str(entry["id"]), "--reason", "drill").returncode == 0
    assert dead_letters(runtime, [offer_id])[0]["status"] == "discarded"
    assert cli("dlq", "discard", str(entry["id"]), "--reason", "drill").returncode == 1


def test_release_holds_of_dead_lettered_offers(celery_app, runtime, sandbox) -> None:
    ids = through_sift_outage(celery_app, runtime, sandbox, "release", 5)
    intents = {r["offer_id"]: r["payment_intent_id"] for r in offer_rows(runtime, ids).values()}

    listed = cli("holds", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    mine = {h["offer_id"]: h for h in json.loads(listed.stdout) if h["offer_id"] in ids}
    assert {h["payment_intent_id"] for h in mine.values()} == set(intents.values())
    # Each is released by the beat six days after it was placed, at the latest
    for h in mine.values():
        held, due = (datetime.fromisoformat(h[k]) for k in ("payment_held_at", "release_due_at"))
        assert due - held == timedelta(days=6)

    dry = cli("holds", "release", "--dead-lettered", "--dry-run")
    assert dry.returncode == 0 and all(pi in dry.stdout for pi in intents.values())
    assert {runtime.stripe.get_hold(pi).status for pi in intents.values()} == {"requires_capture"}

    released = cli("holds", "release", "--dead-lettered")
    assert released.returncode == 0, released.stderr
    assert {runtime.stripe.get_hold(pi).status for pi in intents.values()} == {"canceled"}
    assert {r["hold_status"] for r in offer_rows(runtime, ids).values()} == {"released"}
    # A second run finds nothing of ours to release
    second = cli("holds", "release", "--dead-lettered")
    assert second.returncode == 0 and not any(pi in second.stdout for pi in intents.values())

    for entry in dead_letters(runtime, ids):
        assert cli("dlq", "discard", str(entry["id"]), "--reason", "hold released in a drill").returncode == 0


def test_faults_are_set_and_cleared_from_the_cli(sandbox) -> None:
    from offers_workers.local.sandbox import get_faults

    assert cli("sandbox", "faults", "set", "plaid", "--status", "503", "--rate", "0.5").returncode == 0
    assert get_faults(sandbox, "plaid")["plaid"]["fault"]["status"] == 503
    assert cli("sandbox", "faults", "clear").returncode == 0
    assert get_faults(sandbox, "plaid")["plaid"]["fault"] is None
    assert cli("sandbox", "faults", "set", "plaid").returncode == 2
