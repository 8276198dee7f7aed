"""Fault injection, seen through each adapter: injected errors and timeouts are TransientErrors."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from config.settings import Settings
from offers_workers.domain.errors import TransientError
from offers_workers.local.sandbox import Sandbox, clear_faults, get_faults, set_fault
from offers_workers.partners.aws_events import EventPublisher
from offers_workers.partners.plaid_funds import PlaidFunds
from offers_workers.partners.sift_risk import SiftRisk
from offers_workers.partners.stripe_payments import StripePayments
from offers_workers.partners.table import SAGA_PARTNERS
from tests.partners.orders import order_to_score


def call(partner: str, settings: Settings) -> Callable[[], object]:
    """One representative adapter call per partner (fresh ids, so no idempotent replay)."""
    offer_id = f"off_{uuid.uuid4().hex}"
    if partner == "stripe":
        payments = StripePayments(settings)
        return lambda: payments.place_hold(
            offer_id=offer_id, amount_cents=1000, currency="usd", payment_method_id="pm_card_visa", metadata={}
        )
    if partner == "sift":
        risk = SiftRisk(settings)
        return lambda: risk.score_order(
            order_to_score("alice", offer_id=offer_id, amount_cents=1000, with_buyer_context=False)
        )
    if partner == "plaid":
        funds = PlaidFunds(settings)
        return lambda: funds.balance(access_token="access-sandbox-1", account_id="acc_1")
    publisher = EventPublisher(settings)
    return lambda: publisher.publish(
        event_id=offer_id, detail_type="OfferSubmitted", detail={}, sns_topic_arn=settings.sns_submitted_topic_arn
    )


@pytest.mark.parametrize("partner", SAGA_PARTNERS)
@pytest.mark.parametrize("status", [503, 429, 500])
def test_injected_status_is_transient_then_clears(
    sandbox: Sandbox, settings: Settings, partner: str, status: int
) -> None:
    attempt = call(partner, settings)
    set_fault(sandbox, partner, status=status, rate=1.0)
    before = get_faults(sandbox, partner)[partner]
    with pytest.raises(TransientError) as info:
        attempt()
    assert info.value.partner == partner and info.value.http_status == status
    after = get_faults(sandbox, partner)[partner]
    # One call, one request: no SDK retried behind our back.
    assert (after["requests"] - before["requests"], after["injected"] - before["injected"]) == (1, 1)
    clear_faults(sandbox, partner)
    attempt()


@pytest.mark.parametrize("partner", SAGA_PARTNERS)
def test_latency_beyond_read_timeout_is_transient(
    sandbox: Sandbox, fast_settings: Settings, settings: Settings, partner: str
) -> None:
    attempt = call(partner, fast_settings)
    set_fault(sandbox, partner, latency_ms=int(fast_settings.partner_read_timeout * 1000) + 250)
    with pytest.raises(TransientError) as info:
        attempt()
    assert info.value.http_status is None
    clear_faults(sandbox, partner)
    # The partner is healthy again (checked with the normal timeout: 0.2 s is tight on a loaded machine)
    call(partner, settings)()


def test_latency_below_timeout_and_zero_rate_pass(sandbox: Sandbox, settings: Settings) -> None:
    attempt = call("sift", settings)
    set_fault(sandbox, "sift", status=503, rate=0.0, latency_ms=20)
    attempt()
    snapshot = get_faults(sandbox, "sift")["sift"]
    assert snapshot["fault"] == {"status": 503, "rate": 0.0, "latency_ms": 20} and snapshot["injected"] == 0


@pytest.mark.parametrize("partner", SAGA_PARTNERS)
def test_answer_time_leaves_out_the_injected_latency(sandbox: Sandbox, settings: Settings, partner: str) -> None:
    attempt = call(partner, settings)
    set_fault(sandbox, partner, latency_ms=300)  # also restarts the answer times
    for _ in range(3):
        attempt()
    snapshot = get_faults(sandbox, partner)[partner]
    answers = snapshot["answer_ms"]
    # Every request timed (a Stripe hold or an AWS publish takes two), each well under the 300 ms slept.
    assert answers["count"] == snapshot["requests"] >= 3, snapshot
    assert 0 < answers["p50"] <= answers["p99"] < 150, answers
    set_fault(sandbox, partner)
    assert get_faults(sandbox, partner)[partner]["answer_ms"]["count"] == 0


def test_faults_are_shared_through_settings_urls(sandbox: Sandbox, settings: Settings) -> None:
    set_fault(settings, "plaid", status=503)  # any process holding the settings sees the same faults
    assert get_faults(sandbox)["plaid"]["fault"]["status"] == 503
    clear_faults(settings)
    assert all(f["fault"] is None for f in get_faults(sandbox).values())


def test_bad_fault_is_refused(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError):
        set_fault(sandbox, "stripe", status=503, rate=2.0)
    with pytest.raises(ValueError):
        set_fault(sandbox, "paypal", status=503)
