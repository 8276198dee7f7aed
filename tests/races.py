"""Cancellation at any moment, shared by the cancellation tests and the both-brokers scenarios:
offers and cancels sent on a timeline, and what the buyer, Stripe and the bus then see.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

from celery import Celery

from offers_workers.domain import states
from offers_workers.local.samples import base_offer
from offers_workers.runtime import Runtime
from tests.bus import BusReader
from tests.conftest import new_id, offer_rows, wait_until


def settled_cancelled(runtime: Runtime, ids: list[str]) -> bool:
    """Every offer cancelled, no hold left held, its offer.cancelled event published."""
    rows = offer_rows(runtime, ids)
    if len(rows) < len(ids) or any(r["state"] != states.CANCELLED or r["hold_status"] == "held" for r in rows.values()):
        return False
    with runtime.db.transaction() as conn:
        published = conn.execute(
            "SELECT count(*) AS n FROM offer_events WHERE offer_id = ANY(%s) AND detail_type = 'offer.cancelled'"
            " AND published_at IS NOT NULL",
            (ids,),
        ).fetchone()["n"]
    return published == len(ids)


def holds_by_offer(runtime: Runtime, ids: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for pi in runtime.stripe.list_holds():
        if pi.offer_id in ids:
            found.setdefault(pi.offer_id, []).append(pi.status)
    return found


def cancelled_events(bus: BusReader, ids: list[str]) -> tuple[Counter[str], Counter[str]]:
    """offer.cancelled events per offer on the EventBridge bus, and on the SNS offers-cancelled topic."""
    received = bus.drain()
    on_bus = Counter(
        e["detail"]["offer_id"]
        for e in received["bus"]
        if e["detail-type"] == "offer.cancelled" and e["detail"]["offer_id"] in ids
    )
    on_sns = Counter(m["detail"]["offer_id"] for m in received["sns_cancelled"] if m["detail"]["offer_id"] in ids)
    return on_bus, on_sns


def cancel_race(app: Celery, runtime: Runtime, bus: BusReader, count: int, seed: str) -> dict[str, Any]:
    """Card offers, each with a cancel at a random moment: before its submit, while the saga runs,
    or once it is submitted. Asserts every offer ended cancelled once; returns the drill's figures."""
    rng = random.Random(seed)
    all_ids = [new_id("race") for _ in range(count)]
    timeline: list[tuple[float, str, str]] = []
    after_submitted: list[str] = []
    for n, offer_id in enumerate(all_ids):
        at = n * 0.02
        moment = rng.random()
        timeline.append((at, "submit", offer_id))
        if moment < 0.15:
            timeline.append((at - rng.uniform(0.001, 0.2), "cancel", offer_id))
        elif moment < 0.75:
            timeline.append((at + rng.uniform(0, 1.5), "cancel", offer_id))
        else:
            after_submitted.append(offer_id)
    timeline.sort()
    payloads = {offer_id: base_offer(offer_id, n) for n, offer_id in enumerate(all_ids)}

    def cancel(offer_id: str) -> None:
        app.send_task("offers.cancel", kwargs={"offer_id": offer_id, "reason": "buyer_withdrew", "actor": "buyer"})

    def cancel_once_submitted() -> None:
        waiting = set(after_submitted)
        deadline = time.monotonic() + 120
        while waiting and time.monotonic() < deadline:
            for offer_id, row in offer_rows(runtime, list(waiting)).items():
                if row["state"] == states.SUBMITTED:
                    cancel(offer_id)
                    waiting.discard(offer_id)
            time.sleep(0.05)

    watcher = threading.Thread(target=cancel_once_submitted)
    started = time.monotonic()
    watcher.start()
    base = time.monotonic() + 0.2
    for at, kind, offer_id in timeline:
        time.sleep(max(0.0, base + at - time.monotonic()))
        if kind == "submit":
            app.send_task("offers.submit", kwargs={"offer": payloads[offer_id]})
        else:
            cancel(offer_id)
    watcher.join()

    # Then every offer ends cancelled, its hold released and its event published
    wait_until(lambda: settled_cancelled(runtime, all_ids), timeout=120, message="every offer to settle cancelled")
    drained = time.monotonic() - started
    assert not any(r["state"] == states.SUBMITTED for r in offer_rows(runtime, all_ids).values())
    # No PaymentIntent of a cancelled offer is left requires_capture, and none was created twice
    holds = holds_by_offer(runtime, all_ids)
    assert [o for o, sts in holds.items() if "requires_capture" in sts] == []
    assert [o for o, sts in holds.items() if len(sts) > 1] == []
    # Exactly one offer.cancelled per offer, on the bus and on SNS offers-cancelled
    on_bus, on_sns = cancelled_events(bus, all_ids)
    assert set(on_bus) == set(all_ids) and set(on_bus.values()) == {1}
    assert set(on_sns) == set(all_ids) and set(on_sns.values()) == {1}

    with runtime.db.transaction() as conn:
        moments = Counter(
            r["from_state"]
            for r in conn.execute(
                "SELECT from_state FROM audit_events WHERE offer_id = ANY(%s) AND kind = 'transition' AND to_state = 'cancelled'",
                (all_ids,),
            )
        )
        tombstones = conn.execute(
            "SELECT count(*) AS n FROM cancel_requests WHERE offer_id = ANY(%s) AND outcome = 'tombstone_applied'",
            (all_ids,),
        ).fetchone()["n"]
    mid_saga = sum(
        moments[s]
        for s in (states.RECEIVED, states.VALIDATED, states.PAYMENT_HELD, states.RISK_CLEARED, states.AUCTION_TRIGGERED)
    )
    # The race covered every moment: before intake, mid-saga, and after submitted
    assert tombstones > 0 and moments[states.SUBMITTED] > 0
    assert (
        sum(moments[s] for s in (states.VALIDATED, states.PAYMENT_HELD, states.RISK_CLEARED, states.AUCTION_TRIGGERED))
        > 0
    )
    return {
        "offers": len(all_ids),
        "lost": 0,
        "duplicate_holds": 0,
        "orphan_holds": 0,
        "dead_lettered": 0,
        "faults": f"cancel before submit {tombstones}, mid-saga {mid_saga - tombstones}, after submitted {moments[states.SUBMITTED]}"
        f" ({len(holds)} holds placed, 1 event each)",
        "drain_s": round(drained, 1),
    }
