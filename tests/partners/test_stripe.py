"""StripePayments against the Stripe sandbox, through the real ``stripe`` SDK."""

from __future__ import annotations

import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import stripe
from pydantic import SecretStr

from config.settings import Settings
from offers_workers.domain.errors import OfferRejected, PermanentError, TransientError
from offers_workers.local.sandbox import Sandbox, advance_clock
from offers_workers.local.sandbox.stripe_server import StripeHandler
from offers_workers.partners.stripe_payments import Hold, StripePayments


@pytest.fixture(scope="module")
def payments(settings: Settings) -> StripePayments:
    return StripePayments(settings)


@pytest.fixture(scope="module")
def raw(settings: Settings) -> stripe.StripeClient:
    return stripe.StripeClient(
        "sk_test_raw",
        base_addresses={"api": settings.stripe_api_base},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=(2, 5)),
    )


def offer() -> str:
    return f"off_{uuid.uuid4().hex}"


def hold(payments: StripePayments, offer_id: str, pm: str = "pm_card_visa", amount: int = 12_500) -> Hold:
    return payments.place_hold(
        offer_id=offer_id, amount_cents=amount, currency="USD", payment_method_id=pm, metadata={"listing_id": "lst_1"}
    )


def holds_for(payments: StripePayments, offer_id: str) -> list[Hold]:
    return [h for h in payments.list_holds() if h.offer_id == offer_id]


HOURS = 3600


def test_visa_places_a_manual_capture_hold(payments: StripePayments, raw: stripe.StripeClient) -> None:
    offer_id = offer()
    placed = hold(payments, offer_id)
    assert placed.status == "requires_capture" and placed.payment_intent_id.startswith("pi_")
    assert payments.get_hold(placed.payment_intent_id) == placed
    pi = raw.v1.payment_intents.retrieve(placed.payment_intent_id)
    assert (pi.amount, pi.currency, pi.capture_method, pi.amount_capturable) == (12_500, "usd", "manual", 12_500)
    assert pi.metadata.to_dict() == {"listing_id": "lst_1", "offer_id": offer_id}
    assert pi.livemode is False


@pytest.mark.parametrize(
    ("pm", "reason"),
    [("pm_card_chargeDeclined", "payment_declined"), ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds")],
)
def test_declines_are_rejections(payments: StripePayments, pm: str, reason: str) -> None:
    offer_id = offer()
    with pytest.raises(OfferRejected) as info:
        hold(payments, offer_id, pm=pm)
    assert info.value.reason == reason
    # As on Stripe, the declined PaymentIntent exists, waiting for another payment method.
    [declined] = holds_for(payments, offer_id)
    assert declined.status == "requires_payment_method"
    with pytest.raises(OfferRejected):  # the stored decline is replayed under the same key
        hold(payments, offer_id, pm=pm)
    assert len(holds_for(payments, offer_id)) == 1


def test_decline_error_carries_the_payment_intent(raw: stripe.StripeClient) -> None:
    with pytest.raises(stripe.CardError) as info:
        raw.v1.payment_intents.create(
            {
                "amount": 500,
                "currency": "usd",
                "payment_method": "pm_card_chargeDeclined",
                "confirm": True,
                "capture_method": "manual",
            }
        )
    err = info.value.error
    assert (info.value.http_status, err.code, err.decline_code) == (402, "card_declined", "generic_decline")
    assert err.payment_intent.status == "requires_payment_method"
    assert err.payment_intent.last_payment_error.decline_code == "generic_decline"


def test_unknown_payment_method_is_permanent(payments: StripePayments) -> None:
    with pytest.raises(PermanentError) as info:
        hold(payments, offer(), pm="pm_card_nonexistent")
    assert info.value.code == "resource_missing"


def test_bad_api_key_is_permanent(settings: Settings) -> None:
    bad = StripePayments(settings.model_copy(update={"stripe_api_key": SecretStr("rk_live_x")}))
    with pytest.raises(PermanentError) as info:
        bad.get_hold("pi_whatever")
    assert info.value.http_status == 401
    assert "rk_live_x" not in str(info.value)


def test_same_key_replays_one_payment_intent(payments: StripePayments, raw: stripe.StripeClient) -> None:
    offer_id = offer()
    first, second = hold(payments, offer_id), hold(payments, offer_id)
    assert first == second
    assert [h.payment_intent_id for h in holds_for(payments, offer_id)] == [first.payment_intent_id]
    params = {
        "amount": 100,
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "confirm": True,
        "capture_method": "manual",
    }
    key = f"raw:{offer_id}"
    a = raw.v1.payment_intents.create(params, {"idempotency_key": key})
    b = raw.v1.payment_intents.create(params, {"idempotency_key": key})
    assert a.id == b.id
    assert b.last_response.headers.get("Idempotent-Replayed") == "true"


def test_same_key_different_params_is_permanent(payments: StripePayments) -> None:
    offer_id = offer()
    hold(payments, offer_id, amount=1000)
    with pytest.raises(PermanentError) as info:
        hold(payments, offer_id, amount=2000)
    assert info.value.http_status == 400 and info.value.code == "IdempotencyError"


def test_concurrent_same_key_makes_one_payment_intent(payments: StripePayments) -> None:
    offer_id = offer()

    def attempt(_: int) -> Hold | Exception:
        try:
            return hold(payments, offer_id)
        except TransientError as exc:  # 409 idempotency_key_in_use while the first is in flight
            return exc

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))
    held = {r.payment_intent_id for r in results if isinstance(r, Hold)}
    assert len(held) == 1
    assert all(isinstance(r, Hold) or r.http_status == 409 for r in results)
    assert [h.payment_intent_id for h in holds_for(payments, offer_id)] == list(held)


def test_key_in_use_is_transient(payments: StripePayments, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the first request under a key runs, a second gets Stripe's 409 idempotency_key_in_use."""
    create = StripeHandler._create

    def slow_create(self: StripeHandler, params: dict) -> dict:
        time.sleep(0.3)
        return create(self, params)

    monkeypatch.setattr(StripeHandler, "_create", slow_create)
    offer_id = offer()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(hold, payments, offer_id)
        time.sleep(0.1)
        with pytest.raises(TransientError) as info:
            hold(payments, offer_id)
    assert (info.value.code, info.value.http_status) == ("idempotency_key_in_use", 409)
    assert first.result().status == "requires_capture"
    assert hold(payments, offer_id) == first.result()


def test_release_cancels_and_is_repeatable(payments: StripePayments, raw: stripe.StripeClient) -> None:
    offer_id = offer()
    placed = hold(payments, offer_id)
    assert payments.release_hold(offer_id=offer_id, payment_intent_id=placed.payment_intent_id) == "canceled"
    assert payments.release_hold(offer_id=offer_id, payment_intent_id=placed.payment_intent_id) == "canceled"
    pi = raw.v1.payment_intents.retrieve(placed.payment_intent_id)
    assert (pi.status, pi.cancellation_reason, pi.amount_capturable) == ("canceled", "abandoned", 0)
    # A release under another key hits Stripe's "unexpected state" and still counts as released.
    assert payments.release_hold(offer_id=offer(), payment_intent_id=placed.payment_intent_id) == "canceled"
    with pytest.raises(stripe.InvalidRequestError) as info:
        raw.v1.payment_intents.cancel(placed.payment_intent_id)
    assert info.value.code == "payment_intent_unexpected_state"


def test_release_of_a_captured_hold_is_permanent(payments: StripePayments, raw: stripe.StripeClient) -> None:
    offer_id = offer()
    placed = hold(payments, offer_id)
    assert raw.v1.payment_intents.capture(placed.payment_intent_id).status == "succeeded"
    with pytest.raises(PermanentError) as info:
        payments.release_hold(offer_id=offer_id, payment_intent_id=placed.payment_intent_id)
    assert info.value.code == "payment_intent_captured"


def test_unknown_payment_intent_is_permanent(payments: StripePayments) -> None:
    with pytest.raises(PermanentError) as info:
        payments.get_hold("pi_does_not_exist")
    assert (info.value.code, info.value.http_status) == ("resource_missing", 404)


def test_list_pages_through_more_than_100(payments: StripePayments, raw: stripe.StripeClient) -> None:
    ids = [hold(payments, offer(), amount=100 + i).payment_intent_id for i in range(120)]
    listed = [h.payment_intent_id for h in payments.list_holds()]
    assert len(listed) == len(set(listed)) >= 120
    assert listed[:120] == ids[::-1]  # newest first, across pages of 100
    assert {h.payment_intent_id for h in payments.list_holds(status="requires_capture")} >= set(ids)
    page = raw.v1.payment_intents.list({"limit": 3, "ending_before": ids[0]})
    assert [p.id for p in page.data] == ids[3:0:-1] and page.has_more


def test_keep_alive_call_has_no_nagle_stall(payments: StripePayments) -> None:
    placed = hold(payments, offer())
    payments.get_hold(placed.payment_intent_id)  # open the connection
    timings = []
    for _ in range(25):
        start = time.perf_counter()
        payments.get_hold(placed.payment_intent_id)
        timings.append(time.perf_counter() - start)
    assert statistics.median(timings) < 0.020


# --- Stripe's 24-hour idempotency window, and Search ------------------------------------------------


def test_idempotency_window_the_sandbox_forgets_a_key_after_24_hours(
    raw: stripe.StripeClient, sandbox: Sandbox
) -> None:
    params = {"amount": 300, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
    key = f"raw:{offer()}"
    first = raw.v1.payment_intents.create(params, {"idempotency_key": key})
    clock = advance_clock(sandbox, 23 * HOURS)
    assert clock["idempotency_ttl_s"] == 24 * HOURS
    replayed = raw.v1.payment_intents.create(params, {"idempotency_key": key})
    assert replayed.id == first.id and replayed.last_response.headers.get("Idempotent-Replayed") == "true"
    later = advance_clock(sandbox, 2 * HOURS)
    assert later["advanced_s"] - clock["advanced_s"] == 2 * HOURS and later["now"] >= first.created + 25 * HOURS
    # As on Stripe, a key older than 24 hours is a new request: a second PaymentIntent
    again = raw.v1.payment_intents.create(params, {"idempotency_key": key})
    assert again.id != first.id and again.last_response.headers.get("Idempotent-Replayed") is None
    assert again.created >= first.created + 25 * HOURS


def test_idempotency_window_the_clock_only_moves_forward(sandbox: Sandbox) -> None:
    for bad in (-1, "1", None):
        with pytest.raises(ValueError, match="advance_s"):
            advance_clock(sandbox, bad)  # type: ignore[arg-type]


def test_search_finds_payment_intents_by_metadata_newest_first(
    payments: StripePayments, raw: stripe.StripeClient
) -> None:
    offer_id, other = offer(), offer()
    ids = [hold(payments, o).payment_intent_id for o in (offer_id, other)]
    extra = raw.v1.payment_intents.create(
        {"amount": 100, "currency": "usd", "metadata": {"offer_id": offer_id}, "payment_method": "pm_card_visa"}
    )
    query = f"metadata['offer_id']:'{offer_id}'"
    found = raw.v1.payment_intents.search({"query": query})
    assert (found.object, found.has_more, found.next_page, found.url) == (
        "search_result",
        False,
        None,
        "/v1/payment_intents/search",
    )
    assert [pi.id for pi in found.data] == [extra.id, ids[0]]
    page = raw.v1.payment_intents.search({"query": query, "limit": 1})
    assert [pi.id for pi in page.data] == [extra.id] and page.has_more and page.next_page
    assert [pi.id for pi in page.auto_paging_iter()] == [extra.id, ids[0]]
    held = raw.v1.payment_intents.search({"query": f'metadata["offer_id"]:"{offer_id}" AND status:"requires_capture"'})
    assert [pi.id for pi in held.data] == [ids[0]]
    with pytest.raises(stripe.InvalidRequestError) as info:
        raw.v1.payment_intents.search({"query": "amount>100"})
    assert info.value.http_status == 400


def test_second_hold_never_placed_after_the_key_expired(
    payments: StripePayments, raw: stripe.StripeClient, sandbox: Sandbox
) -> None:
    """A replay 25 hours later: Stripe forgot the key, the offer's hold is found and adopted."""
    offer_id = offer()
    placed = hold(payments, offer_id)
    advance_clock(sandbox, 25 * HOURS)
    assert hold(payments, offer_id) == placed
    every = raw.v1.payment_intents.list({"limit": 100}).auto_paging_iter()
    mine = [pi for pi in every if pi.metadata.to_dict().get("offer_id") == offer_id]
    assert [(pi.id, pi.status) for pi in mine] == [(placed.payment_intent_id, "requires_capture")]


def test_second_hold_after_a_release_is_a_new_hold_under_a_key_of_its_own(payments: StripePayments) -> None:
    """Within 24 hours the first key would replay the first hold's answer, though it was released."""
    offer_id = offer()
    first = hold(payments, offer_id)
    payments.release_hold(offer_id=offer_id, payment_intent_id=first.payment_intent_id)
    second = hold(payments, offer_id)
    assert second.payment_intent_id != first.payment_intent_id and second.status == "requires_capture"
    assert hold(payments, offer_id) == second
    assert sorted((h.payment_intent_id, h.status) for h in holds_for(payments, offer_id)) == sorted(
        [(first.payment_intent_id, "canceled"), (second.payment_intent_id, "requires_capture")]
    )
