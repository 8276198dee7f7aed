"""The runbook's feature flags at run time, and real-time draft validation, with real workers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from offers_workers.domain import states
from offers_workers.local.samples import base_offer
from tests.conftest import cli, new_id, wait_until
from tests.drillkit import drill

pytestmark = pytest.mark.usefixtures("fleet")


@pytest.fixture
def flags_restored() -> Iterator[None]:
    yield
    for name, value in (
        ("OFFER_SUBMISSION_ENABLED", "on"),
        ("REAL_TIME_VALIDATION", "on"),
        ("SOFT_LAUNCH_MODE", "off"),
    ):
        assert cli("flags", "set", name, value).returncode == 0


def rejections(runtime, offer_ids: list[str]) -> dict[str, str]:
    with runtime.db.transaction() as conn:
        return {
            r["offer_id"]: r["reason"]
            for r in conn.execute(
                "SELECT offer_id, reason FROM intake_rejections WHERE offer_id = ANY(%s)", (offer_ids,)
            )
        }


def states_of(runtime, offer_ids: list[str]) -> dict[str, str]:
    with runtime.db.transaction() as conn:
        return {
            r["offer_id"]: r["state"]
            for r in conn.execute("SELECT offer_id, state FROM offers WHERE offer_id = ANY(%s)", (offer_ids,))
        }


def test_submission_switched_off_mid_run_rejects_new_offers_within_seconds_and_lets_flight_finish(
    celery_app, runtime, flags_restored
) -> None:
    # Given offers in flight
    in_flight = [base_offer(new_id("inflight"), n) for n in range(20)]
    for offer in in_flight:
        celery_app.send_task("offers.submit", kwargs={"offer": offer})
    in_flight_ids = [o["offer_id"] for o in in_flight]
    wait_until(lambda: len(states_of(runtime, in_flight_ids)) == 20, message="the first offers to be received")

    # When an operator switches submission off while offers keep arriving, one every 100 ms
    switched = cli("flags", "set", "OFFER_SUBMISSION_ENABLED", "off")
    assert switched.returncode == 0 and "OFFER_SUBMISSION_ENABLED is off" in switched.stdout
    switched_at = time.monotonic()
    sent: list[tuple[float, str]] = []
    while time.monotonic() - switched_at < 7:
        offer = base_offer(new_id("late"), len(sent))
        celery_app.send_task("offers.submit", kwargs={"offer": offer})
        sent.append((time.monotonic() - switched_at, offer["offer_id"]))
        time.sleep(0.1)
    late_ids = [offer_id for _, offer_id in sent]
    wait_until(
        lambda: len(rejections(runtime, late_ids)) + len(states_of(runtime, late_ids)) == len(late_ids),
        message="every late offer recorded",
    )

    # Then every offer sent 5 s or more after the switch is rejected submission_disabled, recorded
    rejected = rejections(runtime, late_ids)
    assert all(rejected.get(offer_id) == "submission_disabled" for at, offer_id in sent if at >= 5)
    first_rejected_at = min(at for at, offer_id in sent if offer_id in rejected)
    assert first_rejected_at < 5
    # and the offers already in flight finish
    wait_until(
        lambda: set(states_of(runtime, in_flight_ids).values()) == {states.SUBMITTED},
        message="in-flight offers to finish",
    )

    # The change is in the audit trail, and switching back lets a resent offer in
    with runtime.db.transaction() as conn:
        change = conn.execute(
            "SELECT actor, data FROM audit_events WHERE kind = 'flag_changed' AND reason = 'OFFER_SUBMISSION_ENABLED' ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert change["data"] == {"flag": "OFFER_SUBMISSION_ENABLED", "from": True, "to": False} and change[
        "actor"
    ].startswith("cli:")
    assert cli("flags", "set", "OFFER_SUBMISSION_ENABLED", "on").returncode == 0
    time.sleep(runtime.settings.flag_cache_seconds + 1)  # the workers' cache of the flag
    retry_id = late_ids[-1]
    celery_app.send_task("offers.submit", kwargs={"offer": base_offer(retry_id, len(sent) - 1)})
    wait_until(
        lambda: states_of(runtime, [retry_id]).get(retry_id) == states.SUBMITTED,
        message="the resent offer to go through",
    )
    listed = json.loads(cli("flags", "list", "--json").stdout)
    assert {f["name"]: f["enabled"] for f in listed} == {
        "OFFER_SUBMISSION_ENABLED": True,
        "REAL_TIME_VALIDATION": True,
        "SOFT_LAUNCH_MODE": False,
    }
    assert cli("flags", "set", "NO_SUCH_FLAG", "on").returncode == 2


DRAFTS: dict[str, tuple[dict[str, Any], set[str]]] = {
    "valid": ({}, set()),
    "unknown listing": ({"listing_id": "lst_missing"}, {"listing_not_found"}),
    "sold listing": ({"listing_id": "lst_3"}, {"listing_unavailable"}),
    "below minimum": ({"amount_cents": 500}, {"below_minimum"}),
    "below auto-reject": ({"amount_cents": 9000}, {"below_auto_reject_threshold"}),
    "currency": ({"currency": "EUR"}, {"currency_mismatch"}),
    "maker": ({"maker_id": "mkr_2"}, {"maker_mismatch"}),
    "bank not accepted": (
        {
            "listing_id": "lst_4",
            "maker_id": "mkr_2",
            "payment": {"method": "bank_account", "plaid_access_token": "t", "plaid_account_id": "a"},
        },
        {"bank_payments_not_accepted"},
    ),
    "malformed": ({"amount_cents": -5, "colour": "red"}, {"greater_than_equal", "extra_forbidden"}),
}


@pytest.mark.parametrize("case", list(DRAFTS))
def test_validate_draft_answers_through_the_result_backend(celery_app, runtime, case: str) -> None:
    changes, codes = DRAFTS[case]
    draft = base_offer(new_id("draft"), 1) | changes
    answer = celery_app.send_task("offers.validate_draft", kwargs={"draft": draft}).get(timeout=20)
    assert answer["valid"] is (not codes)
    assert (
        {e["code"] for e in answer["errors"]} >= codes and set(answer["errors"][0]) == {"field", "code", "message"}
        if codes
        else answer["errors"] == []
    )
    # No side effects: a draft is not an offer
    assert states_of(runtime, [draft["offer_id"]]) == {} and rejections(runtime, [draft["offer_id"]]) == {}


def test_validate_draft_says_when_real_time_validation_is_off(celery_app, flags_restored) -> None:
    assert cli("flags", "set", "REAL_TIME_VALIDATION", "off").returncode == 0
    draft = base_offer(new_id("draft"), 1) | {"amount_cents": 500}

    def answer() -> dict[str, Any]:
        return celery_app.send_task("offers.validate_draft", kwargs={"draft": draft}).get(timeout=20)

    off = wait_until(lambda: (a := answer())["valid"] is None and a, timeout=10, message="the flag to be seen")
    assert off["errors"][0]["code"] == "real_time_validation_off"


def test_soft_launch_admits_offers_at_the_global_rate_and_loses_none(
    offers_env, runtime, tmp_path, flags_restored
) -> None:
    rate = 5
    with drill(
        "soft",
        offers_env,
        tmp_path,
        process_types=("worker", "worker_partners"),
        OFFERS_SOFT_LAUNCH_RATE=str(rate),
        OFFERS_SOFT_LAUNCH_BURST="1",
        OFFERS_SOFT_LAUNCH_MAKERS="mkr_1",
    ) as d:
        # Given soft launch on, admitting 5 offers a second across both intake processes, maker mkr_1 only
        assert cli("flags", "set", "SOFT_LAUNCH_MODE", "on").returncode == 0
        time.sleep(d.runtime.settings.flag_cache_seconds + 0.5)
        # When 40 offers arrive at once, and one from a maker not admitted yet
        offers = [base_offer(new_id("soft"), n) for n in range(40)]
        outsider = base_offer(new_id("soft"), 99) | {"listing_id": "lst_4", "maker_id": "mkr_2"}
        for offer in [*offers, outsider]:
            d.app.send_task("offers.submit", kwargs={"offer": offer})
        ids = [o["offer_id"] for o in offers]
        wait_until(lambda: len(states_of(runtime, ids)) == 40, timeout=60, message="all offers admitted")

    # Then every offer got in, none faster than the rate allows, and the outsider is recorded as refused
    with runtime.db.transaction() as conn:
        times = [
            r["received_at"]
            for r in conn.execute(
                "SELECT received_at FROM offers WHERE offer_id = ANY(%s) ORDER BY received_at", (ids,)
            )
        ]
    assert times[-1] - times[0] >= timedelta(seconds=(40 - 1) / rate * 0.9)
    busiest = max(sum(1 for t in times if start <= t < start + timedelta(seconds=1)) for start in times)
    assert busiest <= rate + 1, f"{busiest} offers admitted within one second"
    assert rejections(runtime, [outsider["offer_id"]]) == {outsider["offer_id"]: "submission_disabled"}
