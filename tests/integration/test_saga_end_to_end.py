"""The saga end to end: real worker processes (as the Procfile runs them), real Postgres and Redis,
the real partner SDKs over HTTP against the sandbox, events read back from the bus through SQS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import defaultdict
from typing import Any

import pytest
import stripe

from offers_workers.domain import states
from offers_workers.domain.events import event_id
from offers_workers.local.demo import settled
from offers_workers.local.samples import SCENARIOS, base_offer, make_samples
from offers_workers.store import audit_trail
from tests.bus import BusReader
from tests.conftest import cli, new_id, offer_rows, wait_until

pytestmark = pytest.mark.usefixtures("fleet")


@pytest.fixture(scope="module")
def bus(settings) -> BusReader:
    return BusReader(settings)


def stripe_intents(settings) -> dict[str, list[dict[str, Any]]]:
    """Every PaymentIntent in the Stripe sandbox by offer_id, through the real SDK's list."""
    client = stripe.StripeClient(settings.secret("stripe_api_key"), base_addresses={"api": settings.stripe_api_base})
    by_offer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pi in client.v1.payment_intents.list({"limit": 100}).auto_paging_iter():
        by_offer[pi.metadata.to_dict().get("offer_id", "")].append(pi.to_dict())
    return by_offer


def dead_letter_errors(runtime, offer_ids: list[str]) -> list[tuple[str, str, str]]:
    """Why offers were dead-lettered, to make an unexpected failure readable."""
    with runtime.db.transaction() as conn:
        rows = conn.execute(
            "SELECT offer_id, stage, error_type, error_message FROM dead_letters WHERE offer_id = ANY(%s)", (offer_ids,)
        ).fetchall()
    return [(r["offer_id"], r["stage"], f"{r['error_type']}: {r['error_message']}") for r in rows]


def send(app, offer: Any) -> str:
    return app.send_task("offers.submit", kwargs={"offer": offer}).id


def test_every_outcome_path_ends_right_with_the_right_side_effects(celery_app, runtime, settings, bus) -> None:
    # Given three samples of every scenario (every outcome path, duplicates included)
    samples = make_samples(3 * len(SCENARIOS), new_id("paths"))
    assert {s.scenario.name for s in samples} == {s.name for s in SCENARIOS}

    # When upstream sends them
    for sample in samples:
        send(celery_app, sample.messages[0])
    for sample in samples:
        for message in sample.messages[1:]:
            send(celery_app, message)
    _, offers, rejections = wait_until(
        lambda: (r := settled(runtime, samples))[0] == len(samples) and r, timeout=120, message="every sample to settle"
    )

    # Then each offer ended in the state and reason it was built for
    wrong = [
        (s.offer_id, s.scenario.name, offers.get(s.offer_id, {}).get("state"), offers.get(s.offer_id, {}).get("reason"))
        for s in samples
        if s.scenario.state is not None
        and (offers[s.offer_id]["state"], offers[s.offer_id]["reason"]) != (s.scenario.state, s.scenario.reason)
    ]
    assert wrong == [], dead_letter_errors(runtime, [w[0] for w in wrong])
    for s in samples:
        if s.scenario.state is None:
            assert s.offer_id not in offers
        assert rejections.get(s.offer_id, []) == ([s.scenario.intake_rejection] if s.scenario.intake_rejection else [])

    # and Stripe shows exactly the holds each path must leave: held, released, or none at all
    intents = stripe_intents(settings)
    for s in samples:
        held = [pi["status"] for pi in intents.get(s.offer_id, []) if pi["status"] in ("requires_capture", "canceled")]
        assert held == ([s.scenario.hold] if s.scenario.hold else []), (s.offer_id, s.scenario.name, held)
        if s.scenario.state == states.REJECTED and s.scenario.reason not in (
            "payment_declined",
            "insufficient_funds",
            "risk_blocked",
        ):
            assert s.offer_id not in intents, f"{s.scenario.name}: rejected before the hold but Stripe was called"
        if s.scenario.hold == "requires_capture":
            assert offers[s.offer_id]["payment_intent_id"] == intents[s.offer_id][0]["id"]
            assert intents[s.offer_id][0]["capture_method"] == "manual"

    # and every outcome is on the bus once per offer, with its stable event id; submitted ones on SNS
    submitted = {s.offer_id for s in samples if s.scenario.state == states.SUBMITTED}
    rejected = {s.offer_id for s in samples if s.scenario.state == states.REJECTED}

    def on_bus() -> bool:
        got = bus.drain()
        ids = {e["detail"]["offer_id"] for e in got["bus"]}
        sns_ids = {e["detail"]["offer_id"] for e in got["sns_submitted"]}
        return submitted | rejected <= ids and submitted <= sns_ids

    wait_until(on_bus, timeout=60, message="events on the bus and SNS")
    events = {(e["detail"]["offer_id"], e["detail-type"]): e for e in bus.received["bus"]}
    for offer_id in submitted:
        event = events[(offer_id, "offer.submitted")]
        assert event["source"] == "offers.submission"
        assert event["detail"]["event_id"] == event_id(offer_id, "offer.submitted")
        assert event["detail"]["state"] == states.SUBMITTED
    for offer_id in rejected:
        event = events[(offer_id, "offer.rejected")]
        assert event["detail"]["reason"] == offers[offer_id]["reason"]
        assert (offer_id, "offer.submitted") not in events
    ours = {s.offer_id for s in samples}
    assert not [e for e in bus.received["sns_cancelled"] if e["detail"]["offer_id"] in ours]
    assert not [e for e in bus.received["bus"] if e["detail"]["offer_id"] in ours - submitted - rejected]

    # and the audit trail holds every transition in order
    with runtime.db.transaction() as conn:
        for offer_id in submitted:
            trail = audit_trail.offer_states(conn, offer_id)
            assert trail == list(states.HAPPY_PATH)
        for offer_id in rejected:
            trail = audit_trail.offer_states(conn, offer_id)
            assert trail[0] == states.RECEIVED and trail[-1] == states.REJECTED
            assert trail[:-1] == list(states.HAPPY_PATH[: len(trail) - 1])
        lags = conn.execute(
            "SELECT count(*) AS n FROM offers WHERE offer_id = ANY(%s) AND auction_triggered_at > received_at",
            (list(submitted),),
        ).fetchone()
        assert lags["n"] == len(submitted)


def test_the_same_submit_three_times_at_once_is_one_offer_and_one_hold(celery_app, runtime, settings) -> None:
    offer = base_offer(new_id("dup"), 1)
    # When three deliveries race, from three threads
    threads = [threading.Thread(target=send, args=(celery_app, offer)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # and a fourth comes after the offer went through
    wait_until(lambda: _state(runtime, offer["offer_id"]) == states.SUBMITTED, message="the offer to be submitted")
    send(celery_app, offer)
    wait_until(lambda: _duplicates(runtime, offer["offer_id"]) == 3, message="all deliveries to be seen")

    with runtime.db.transaction() as conn:
        assert (
            conn.execute("SELECT count(*) AS n FROM offers WHERE offer_id = %s", (offer["offer_id"],)).fetchone()["n"]
            == 1
        )
    intents = stripe_intents(settings)[offer["offer_id"]]
    assert [pi["status"] for pi in intents] == ["requires_capture"]


def _state(runtime, offer_id: str) -> str | None:
    with runtime.db.transaction() as conn:
        row = conn.execute("SELECT state FROM offers WHERE offer_id = %s", (offer_id,)).fetchone()
    return row["state"] if row else None


def _duplicates(runtime, offer_id: str) -> int:
    with runtime.db.transaction() as conn:
        return conn.execute(
            "SELECT count(*) AS n FROM audit_events WHERE offer_id = %s AND kind = 'duplicate_ignored'", (offer_id,)
        ).fetchone()["n"]


BAD_MESSAGES = {
    "missing fields": (
        {"offer_id": "bad_missing", "amount_cents": 100},
        {"listing_id", "maker_id", "buyer_id", "currency", "payment"},
    ),
    "wrong types": (
        base_offer("bad_types", 1) | {"amount_cents": "lots", "synthetic": "no"},
        {"amount_cents", "synthetic"},
    ),
    "negative amount": (base_offer("bad_negative", 1) | {"amount_cents": -100}, {"amount_cents"}),
    "huge amount": (base_offer("bad_huge", 1) | {"amount_cents": 10**40}, {"amount_cents"}),
    "40 KiB body": (base_offer("bad_big", 1) | {"message": "x" * 40 * 1024}, {""}),
    "unknown fields": (base_offer("bad_unknown", 1) | {"discount": 5, "admin": True}, {"discount", "admin"}),
    "a list": ([base_offer("bad_list", 1)], {""}),
}


def test_invalid_messages_are_recorded_and_the_worker_keeps_serving(celery_app, runtime) -> None:
    task_ids = {name: send(celery_app, message) for name, (message, _) in BAD_MESSAGES.items()}
    good = base_offer(new_id("after_bad"), 3)
    send(celery_app, good)

    wait_until(
        lambda: _state(runtime, good["offer_id"]) == states.SUBMITTED, message="the good offer after the bad ones"
    )
    with runtime.db.transaction() as conn:
        rows = {
            r["task_id"]: r
            for r in conn.execute("SELECT * FROM intake_rejections WHERE task_id = ANY(%s)", (list(task_ids.values()),))
        }
    for name, (message, fields) in BAD_MESSAGES.items():
        row = rows.get(task_ids[name])
        assert row is not None, f"{name}: no intake rejection recorded"
        assert row["reason"] == "invalid_payload"
        assert {e["field"] for e in row["errors"]} == fields, name
        assert row["raw_size"] >= len(json.dumps(message, separators=(",", ":"))) - 1
        assert len(row["raw_body"].encode()) <= 4096
    with runtime.db.transaction() as conn:
        assert conn.execute("SELECT count(*) AS n FROM dead_letters WHERE stage = %s", ("intake",)).fetchone()["n"] == 0


def test_submit_from_the_cli_reads_json_lines_from_stdin(runtime) -> None:
    offers = [base_offer(new_id("cli_submit"), n) for n in range(3)]
    result = subprocess.run(
        [sys.executable, "-m", "offers_workers.ops.cli", "submit", "-"],
        input="\n".join(json.dumps(o) for o in offers),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "sent 3 offer(s)" in result.stdout
    for offer in offers:
        wait_until(lambda o=offer: _state(runtime, o["offer_id"]) == states.SUBMITTED, message="CLI-submitted offers")


def test_submit_refuses_a_file_that_is_not_json(tmp_path) -> None:
    bad = tmp_path / "offers.json"
    bad.write_text('{"offer_id": "x"}\nnot json at all\n')
    result = subprocess.run(
        [sys.executable, "-m", "offers_workers.ops.cli", "submit", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "line 2 is not JSON" in result.stderr


def offer_state(runtime, offer_id: str) -> str | None:
    return offer_rows(runtime, [offer_id]).get(offer_id, {}).get("state")


def test_each_sns_notification_is_recorded_with_its_message_id(celery_app, runtime, settings) -> None:
    """SNS delivery you can see: the MessageId a subscriber gets is the one `offers show` names."""
    bus = BusReader(settings, raw_sns=False)
    offer = base_offer(new_id("sns"), 0)
    send(celery_app, offer)
    offer_id = offer["offer_id"]
    wait_until(lambda: offer_state(runtime, offer_id) == states.SUBMITTED, message="the offer submitted")
    celery_app.send_task("offers.cancel", kwargs={"offer_id": offer_id, "reason": "buyer_withdrew", "actor": "buyer"})
    wait_until(lambda: offer_state(runtime, offer_id) == states.CANCELLED, message="the offer cancelled")

    def notified() -> dict[str, str]:
        received = bus.drain()
        return {
            kind: envelope["MessageId"]
            for kind in ("sns_submitted", "sns_cancelled")
            for envelope in received[kind]
            if json.loads(envelope["Message"])["detail"]["offer_id"] == offer_id
        }

    ids: dict[str, str] = {}

    def both_notified() -> bool:
        ids.update(notified())
        return len(ids) == 2

    wait_until(both_notified, message="both notifications")
    shown = cli("offers", "show", offer_id, "--json")
    assert shown.returncode == 0, shown.stderr
    events = {e["detail_type"]: e for e in json.loads(shown.stdout)["events"]}
    assert events["offer.submitted"]["sns_message_id"] == ids["sns_submitted"], (events, ids)
    assert events["offer.cancelled"]["sns_message_id"] == ids["sns_cancelled"]
    assert all(e["published_at"] and e["bus_event_id"] for e in events.values())
