"""Offers sent through the running fleet, and a Sift outage that dead-letters them: shared by the
failure, cancellation and operations tests."""

from __future__ import annotations

from offers_workers.domain import states
from offers_workers.local.samples import base_offer
from offers_workers.local.sandbox import clear_faults, set_fault
from tests.conftest import new_id, offer_rows, wait_until


def all_in(runtime, offer_ids: list[str], state: str) -> bool:
    found = offer_rows(runtime, offer_ids)
    return len(found) == len(offer_ids) and all(r["state"] == state for r in found.values())


def send_offers(celery_app, prefix: str, count: int) -> list[str]:
    offers = [base_offer(new_id(prefix), n) for n in range(count)]
    for offer in offers:
        celery_app.send_task("offers.submit", kwargs={"offer": offer})
    return [o["offer_id"] for o in offers]


def through_sift_outage(celery_app, runtime, sandbox, prefix: str, count: int) -> list[str]:
    """Send offers while Sift answers 503 to everything; return once all are dead-lettered."""
    set_fault(sandbox, "sift", status=503, rate=1.0)
    try:
        ids = send_offers(celery_app, prefix, count)
        wait_until(lambda: all_in(runtime, ids, states.DEAD_LETTERED), timeout=90, message="offers to be dead-lettered")
    finally:
        clear_faults(sandbox, "sift")
    return ids
