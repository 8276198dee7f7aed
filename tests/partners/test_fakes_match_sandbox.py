"""The fakes cannot drift: each scenario runs against a fake and against the real adapter on the sandbox,
and both must give the same typed results and the same errors (type, partner, code, HTTP status).

Ids a partner makes up (PaymentIntent ids, version ids, EventBridge ids) are compared by position:
the first id one side returns must be where the other side's first id is.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
import stripe
from botocore.exceptions import ClientError

from config.settings import Settings
from offers_workers.domain.errors import OfferRejected, PartnerError, PermanentError
from offers_workers.local.sandbox import Sandbox, advance_clock, clear_faults, set_fault
from offers_workers.local.sandbox.sift_server import score_for
from offers_workers.partners.aws_archive import AuditArchive
from offers_workers.partners.aws_events import EventPublisher, sort_error
from offers_workers.partners.fakes import (
    PARTNER_DOWN,
    FakeArchive,
    FakeAuctionEvents,
    FakeBankFunds,
    FakePayments,
    FakeRiskScoring,
)
from offers_workers.partners.interfaces import (
    Archive,
    AuctionEvents,
    BankFunds,
    Payments,
    RestoreInProgress,
    ReturnRisk,
    RiskScoring,
)
from offers_workers.partners.plaid_funds import PlaidFunds
from offers_workers.partners.sift_risk import SiftRisk
from offers_workers.partners.stripe_payments import StripePayments
from tests.partners.orders import order_to_score

#: What a result is compared by: the field's value, or a stand-in for what a partner makes up.
MADE_UP = ("payment_intent_id", "version_id", "bus_event_id", "sns_message_id")


class Observed:
    """What one side did in a scenario: results and errors, with made-up ids replaced by positions."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self._ids: dict[str, str] = {}

    def __call__(self, action: Callable[[], Any]) -> Any:
        try:
            result = action()
        except OfferRejected as exc:
            self.seen.append(("OfferRejected", exc.reason, exc.detail))
            return None
        except PartnerError as exc:
            self.seen.append((type(exc).__name__, exc.partner, exc.code, exc.http_status))
            return None
        except RestoreInProgress:
            self.seen.append("RestoreInProgress")
            return None
        self.seen.append(self._plain(result))
        return result

    def _plain(self, value: Any) -> Any:
        if isinstance(value, list | tuple) and not isinstance(value, str):
            return [self._plain(v) for v in value]
        if hasattr(value, "__dataclass_fields__"):
            fields = asdict(value)
            fields.pop("created", None)  # the partner's clock, left out of Hold's equality too
            for name in (n for n in MADE_UP if n in fields):
                made_up = fields[name]
                fields[name] = None if made_up is None else self._ids.setdefault(str(made_up), f"#{len(self._ids)}")
            if "restore" in fields:  # expiry dates are the partner's clock: compare the state only
                fields["restore"] = fields["restore"] and fields["restore"].split(",")[0]
            if fields.get("retain_until"):  # the partner's clock too: compare the days left
                fields["retain_until"] = round((fields["retain_until"] - datetime.now(UTC)) / timedelta(days=1))
            return (type(value).__name__, fields)
        return value


def both(scenario: Callable[..., None], fake: Any, real: Any, **kwargs: Any) -> None:
    observed_fake, observed_real = Observed(), Observed()
    scenario(fake, observed_fake, **kwargs)
    scenario(real, observed_real, **kwargs)
    assert observed_fake.seen == observed_real.seen


def new_offer() -> str:
    return f"off_{uuid.uuid4().hex}"


# --- payments -------------------------------------------------------------------------------------


#: Later than Stripe keeps an idempotency key (24 h).
PAST_THE_KEY_S = 25 * 3600


@dataclass
class PaymentsSide:
    payments: Payments
    capture: Callable[[str], Any]
    #: "25 hours later": Stripe has forgotten every idempotency key used so far.
    forget_keys: Callable[[], Any]


@pytest.fixture
def real_payments(settings: Settings, sandbox: Sandbox) -> PaymentsSide:
    raw = stripe.StripeClient(settings.secret("stripe_api_key"), base_addresses={"api": settings.stripe_api_base})
    return PaymentsSide(
        StripePayments(settings),
        lambda pi: raw.v1.payment_intents.capture(pi),
        lambda: advance_clock(sandbox, PAST_THE_KEY_S),
    )


@pytest.fixture
def fake_payments() -> PaymentsSide:
    fake = FakePayments()
    return PaymentsSide(fake, fake.capture, lambda: fake.advance_clock(PAST_THE_KEY_S))


def hold_lifecycle(side: PaymentsSide, see: Observed, offer_id: str, other_offer: str, third_offer: str) -> None:
    p = side.payments

    def place(amount: int = 12_500, pm: str = "pm_card_visa") -> Any:
        return p.place_hold(
            offer_id=offer_id, amount_cents=amount, currency="USD", payment_method_id=pm, metadata={"listing_id": "l"}
        )

    placed = see(place)
    see(place)  # the same key replays the same PaymentIntent
    see(lambda: place(amount=999))  # the same key with other parameters
    see(lambda: p.get_hold(placed.payment_intent_id))
    see(lambda: [h for h in p.list_holds(status="requires_capture") if h.offer_id == offer_id])
    see(lambda: p.release_hold(offer_id=offer_id, payment_intent_id=placed.payment_intent_id))
    see(lambda: p.release_hold(offer_id=offer_id, payment_intent_id=placed.payment_intent_id))
    see(lambda: p.release_hold(offer_id=other_offer, payment_intent_id=placed.payment_intent_id))
    see(lambda: [h for h in p.list_holds() if h.offer_id == offer_id])
    see(lambda: p.get_hold("pi_does_not_exist"))
    see(lambda: p.release_hold(offer_id=third_offer, payment_intent_id="pi_does_not_exist"))
    # A release key belongs to one PaymentIntent: the same offer's key for another one is refused.
    see(lambda: p.release_hold(offer_id=offer_id, payment_intent_id="pi_does_not_exist"))


def test_hold_lifecycle(fake_payments: PaymentsSide, real_payments: PaymentsSide) -> None:
    both(
        hold_lifecycle,
        fake_payments,
        real_payments,
        offer_id=new_offer(),
        other_offer=new_offer(),
        third_offer=new_offer(),
    )


def declines(side: PaymentsSide, see: Observed, offers: list[str]) -> None:
    p = side.payments
    for offer_id, pm in zip(
        offers,
        ["pm_card_chargeDeclined", "pm_card_chargeDeclinedInsufficientFunds", "pm_card_nonexistent"],
        strict=True,
    ):

        def place(offer_id: str = offer_id, pm: str = pm) -> Any:
            return p.place_hold(offer_id=offer_id, amount_cents=500, currency="usd", payment_method_id=pm, metadata={})

        see(place)
        see(place)  # a stored decline is replayed under the same key
        see(lambda offer_id=offer_id: [h for h in p.list_holds() if h.offer_id == offer_id])


def test_declines_and_unknown_payment_methods(fake_payments: PaymentsSide, real_payments: PaymentsSide) -> None:
    both(declines, fake_payments, real_payments, offers=[new_offer() for _ in range(3)])


def captured(side: PaymentsSide, see: Observed, offer_id: str) -> None:
    p = side.payments
    placed = see(
        lambda: p.place_hold(
            offer_id=offer_id, amount_cents=700, currency="usd", payment_method_id="pm_card_visa", metadata={}
        )
    )
    side.capture(placed.payment_intent_id)
    see(lambda: p.get_hold(placed.payment_intent_id))
    see(lambda: p.release_hold(offer_id=offer_id, payment_intent_id=placed.payment_intent_id))


def test_release_of_a_captured_hold(fake_payments: PaymentsSide, real_payments: PaymentsSide) -> None:
    both(captured, fake_payments, real_payments, offer_id=new_offer())


def second_holds(side: PaymentsSide, see: Observed, offer_id: str, charged_offer: str) -> None:
    p = side.payments

    def place(offer_id: str = offer_id, amount: int = 12_500) -> Any:
        return p.place_hold(
            offer_id=offer_id, amount_cents=amount, currency="USD", payment_method_id="pm_card_visa", metadata={}
        )

    placed = see(place)
    side.forget_keys()
    see(place)  # the key is gone: the offer's live hold is adopted
    see(lambda: place(amount=999))  # the offer's live hold, with other parameters
    see(lambda: p.release_hold(offer_id=offer_id, payment_intent_id=placed.payment_intent_id))
    see(place)  # released: a new hold, under a key of its own
    see(place)  # which is adopted in turn
    side.forget_keys()
    see(place)
    see(lambda: sorted((h.status, h.amount_cents) for h in p.list_holds() if h.offer_id == offer_id))
    charged = see(lambda: place(charged_offer))
    side.capture(charged.payment_intent_id)
    side.forget_keys()
    see(lambda: place(charged_offer))  # captured: the buyer was charged, no new hold


def test_second_holds_after_the_idempotency_window(fake_payments: PaymentsSide, real_payments: PaymentsSide) -> None:
    both(second_holds, fake_payments, real_payments, offer_id=new_offer(), charged_offer=new_offer())


# --- risk and funds -------------------------------------------------------------------------------


def scoring(risk: RiskScoring, see: Observed) -> None:
    for buyer in ("risky_mallory", "alice", "bob"):
        see(lambda buyer=buyer: risk.score_order(order_to_score(buyer)))


def test_risk_scores(settings: Settings) -> None:
    # The sandbox's scores are its own rule; the fake is told them, as a unit test tells it its buyers.
    fake = FakeRiskScoring(scores={"risky_mallory": 0.95, "alice": score_for("alice"), "bob": score_for("bob")})
    both(scoring, fake, SiftRisk(settings))


def funds(bank: BankFunds, see: Observed) -> None:
    see(lambda: bank.balance(access_token="access-sandbox-buyer-1", account_id="acc_1"))
    see(lambda: bank.balance(access_token="access-sandbox-low-balance", account_id="acc_1"))
    see(lambda: bank.balance(access_token="access-sandbox-login-required", account_id="acc_1"))
    for token in ("access-sandbox-buyer-1", "access-sandbox-high-risk", "access-sandbox-login-required"):
        see(
            lambda token=token: bank.return_risk(
                offer_id="off_1", access_token=token, account_id="acc_1", amount_cents=12_345
            )
        )


def test_funds_checks(settings: Settings) -> None:
    fake = FakeBankFunds(
        balances={"access-sandbox-low-balance": 0},
        return_risks={"access-sandbox-buyer-1": ReturnRisk(12, 5), "access-sandbox-high-risk": ReturnRisk(95, 95)},
        item_errors={
            "access-sandbox-login-required": PermanentError(
                "plaid", "ITEM_LOGIN_REQUIRED", "the login details of this item have changed", 400
            )
        },
    )
    both(funds, fake, PlaidFunds(settings))


# --- events and archive ---------------------------------------------------------------------------


def publishing(events: AuctionEvents, see: Observed, topic: str, event_id: str) -> None:
    see(lambda: events.publish(event_id=event_id, detail_type="offer.submitted", detail={"a": 1}, sns_topic_arn=topic))
    see(lambda: events.publish(event_id=event_id, detail_type="offer.cancelled", detail={}, sns_topic_arn=None))


def test_publish(settings: Settings) -> None:
    both(
        publishing,
        FakeAuctionEvents(),
        EventPublisher(settings),
        topic=settings.sns_submitted_topic_arn,
        event_id=new_offer(),
    )


def archiving(archive: Archive, see: Observed, prefix: str) -> None:
    body = b'{"id": 1}\n' * 100
    key = f"{prefix}/export.ndjson.gz"
    see(lambda: archive.put_export(key, io.BytesIO(body), hashlib.sha256(body).hexdigest(), {"rows": "100"}))
    see(lambda: archive.put_manifest(f"{prefix}/manifest.json", b"{}"))
    see(lambda: archive.head(key))
    see(lambda: archive.read(key))  # Glacier: not readable before a restore
    see(lambda: archive.restore(key))
    see(lambda: archive.head(key))
    see(lambda: archive.read(key))
    see(lambda: archive.read(f"{prefix}/manifest.json"))
    see(lambda: archive.versions(key))
    see(lambda: archive.head(f"{prefix}/missing"))


def test_archive(settings: Settings) -> None:
    # moto finishes restores at once; the fake does too with restore_polls=0.
    # Not compared: a wrong checksum, which S3 refuses (BadDigest) and the fake too, but moto stores.
    both(archiving, FakeArchive(restore_polls=0), AuditArchive(settings), prefix=f"t/{uuid.uuid4().hex}")


@dataclass
class ArchiveSide:
    archive: Archive
    #: A delete from outside the archive (which never deletes): of one version, or of the key.
    delete: Callable[[str, str | None], None]


def locking(side: ArchiveSide, see: Observed, prefix: str) -> None:
    a = side.archive
    manifest, anchor = f"{prefix}/manifest.json", f"{prefix}/anchors/1.json"
    first = see(lambda: a.put_manifest(manifest, b'{"rows": 1}'))
    see(lambda: a.put_manifest(manifest, b'{"rows": 2}'))  # a second version, the first kept
    see(lambda: a.put_anchor(anchor, b'{"head": 7}'))
    see(lambda: a.lock(manifest, first.version_id))
    see(lambda: a.read(manifest, first.version_id))
    see(lambda: a.read(manifest))
    see(lambda: a.set_legal_hold(anchor, True))
    see(lambda: a.lock(anchor))
    see(lambda: a.set_legal_hold(anchor, False))
    see(lambda: a.lock(anchor))
    see(lambda: side.delete(manifest, first.version_id))  # refused: under retention
    see(lambda: side.delete(anchor, None))  # a delete marker: the version is kept
    see(lambda: a.versions(anchor))
    see(lambda: a.head(anchor))
    see(lambda: a.read(anchor, a.versions(anchor)[0].version_id))
    see(lambda: a.versions(manifest))
    see(lambda: [(h.key, len(h.versions), h.hidden) for h in a.histories(prefix)])
    see(lambda: [(h.key, len(h.versions), h.hidden) for h in a.histories(f"{prefix}/anchors/")])
    see(a.lock_enabled)


def test_object_lock(settings: Settings) -> None:
    raw = boto3.client(
        "s3",
        endpoint_url=settings.aws_endpoint_url,
        region_name=settings.aws_region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )

    def s3_delete(key: str, version_id: str | None) -> None:
        try:
            raw.delete_object(
                Bucket=settings.audit_bucket, Key=key, **({"VersionId": version_id} if version_id else {})
            )
        except ClientError as exc:
            raise sort_error(exc) from exc

    fake = FakeArchive(retention_days=settings.audit_retention_days)
    both(
        locking,
        ArchiveSide(fake, fake.delete),
        ArchiveSide(AuditArchive(settings), s3_delete),
        prefix=f"t/{uuid.uuid4().hex}",
    )


# --- the partner is down --------------------------------------------------------------------------


def one_call(partner: str, impl: Any) -> Callable[[], Any]:
    offer_id = new_offer()
    return {
        "stripe": lambda: impl.place_hold(
            offer_id=offer_id, amount_cents=100, currency="usd", payment_method_id="pm_card_visa", metadata={}
        ),
        "sift": lambda: impl.score_order(
            order_to_score("alice", offer_id=offer_id, amount_cents=100, with_buyer_context=False)
        ),
        "plaid": lambda: impl.balance(access_token="access-sandbox-buyer-1", account_id="acc_1"),
        "aws": lambda: impl.publish(event_id=offer_id, detail_type="offer.submitted", detail={}, sns_topic_arn=None),
    }[partner]


@pytest.fixture
def down(sandbox: Sandbox) -> Iterator[Callable[[str], None]]:
    def set_down(partner: str) -> None:
        set_fault(sandbox, partner, status=503, rate=1.0)

    yield set_down
    clear_faults(sandbox)


@pytest.mark.parametrize("partner", ["stripe", "sift", "plaid", "aws"])
def test_partner_down_is_the_same_transient_error(
    settings: Settings, down: Callable[[str], None], partner: str
) -> None:
    real = {"stripe": StripePayments, "sift": SiftRisk, "plaid": PlaidFunds, "aws": EventPublisher}[partner](settings)
    fake = {
        "stripe": FakePayments,
        "sift": FakeRiskScoring,
        "plaid": FakeBankFunds,
        "aws": FakeAuctionEvents,
    }[partner](fail_with=PARTNER_DOWN[partner])
    down(partner)
    observed_real, observed_fake = Observed(), Observed()
    observed_real(one_call(partner, real))
    observed_fake(one_call(partner, fake))
    assert observed_fake.seen == observed_real.seen == [("TransientError", partner, PARTNER_DOWN[partner].code, 503)]
