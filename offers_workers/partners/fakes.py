"""In-process fakes of every partner role: no network, deterministic, scripted by the test.

Each fake satisfies its Protocol in ``partners.interfaces``, behaves as the partner does where the
saga depends on it (idempotency keys, declines, release rules, Glacier restores) and records every
call, so a test can assert "exactly one hold" or "no event published". Failures are scripted:

    payments = FakePayments(fail_with=TransientError("stripe", "api_error", "down", 503))
    payments.fail_next(TransientError("stripe", "rate_limit", "slow down", 429), method="place_hold")
    risk = FakeRiskScoring(scores={"risky_mallory": 0.95}, default=0.1)

``tests/partners/test_fakes_match_sandbox.py`` runs the same scenarios against these fakes and the
real adapters on the sandbox, so the two cannot drift apart.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from offers_workers.domain.errors import OfferRejected, PermanentError, TransientError
from offers_workers.domain.states import RejectionReason
from offers_workers.partners.interfaces import (
    NEEDS_RESTORE,
    STRIPE_IDEMPOTENCY_TTL_S,
    ArchivedObject,
    Balance,
    Hold,
    KeyHistory,
    ObjectLock,
    ObjectVersion,
    OrderToScore,
    Published,
    RestoreInProgress,
    ReturnRisk,
    RiskScore,
    StoredObject,
    adopt_or_key,
)

__all__ = [
    "PARTNER_DOWN",
    "Call",
    "FakeArchive",
    "FakeAuctionEvents",
    "FakeBankFunds",
    "FakePayments",
    "FakeRiskScoring",
]


@dataclass(frozen=True)
class Call:
    """One recorded call: the method's name and its arguments."""

    method: str
    kwargs: dict[str, Any]


class _Scripted:
    """Call recording and scripted failures, shared by every fake.

    Parameters:
        fail_with: raised by every call until ``fail_with`` is set back to None.
    """

    def __init__(self, *, fail_with: Exception | None = None) -> None:
        self.fail_with = fail_with
        self.calls: list[Call] = []
        self._next: list[tuple[str | None, Exception]] = []

    def fail_next(self, error: Exception, *, method: str | None = None, times: int = 1) -> None:
        """Raise ``error`` on the next ``times`` calls (of ``method`` only, when given), then work again."""
        self._next.extend([(method, error)] * times)

    def calls_to(self, method: str) -> list[Call]:
        """The recorded calls of one method, oldest first."""
        return [c for c in self.calls if c.method == method]

    def _enter(self, method: str, **kwargs: Any) -> None:
        # Recorded before failing: a failed call still reached the partner, as far as the saga knows.
        self.calls.append(Call(method, kwargs))
        for i, (only, error) in enumerate(self._next):
            if only is None or only == method:
                del self._next[i]
                raise error
        if self.fail_with is not None:
            raise self.fail_with


# --- payments -----------------------------------------------------------------------------------

#: Stripe's own test payment methods: the decline each stands for (code, decline_code).
STRIPE_TEST_DECLINES: dict[str, tuple[str, str]] = {
    "pm_card_chargeDeclined": ("card_declined", "generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": ("card_declined", "insufficient_funds"),
}
STRIPE_TEST_CARDS = frozenset({"pm_card_visa", "pm_card_mastercard", "pm_card_amex", *STRIPE_TEST_DECLINES})


@dataclass
class _Intent:
    hold: Hold
    params: dict[str, Any]
    decline: tuple[str, str] | None = None


class FakePayments(_Scripted):
    """``Payments`` as Stripe behaves for manual-capture PaymentIntents.

    Stripe's test payment methods decide the outcome (``pm_card_visa`` holds; ``pm_card_chargeDeclined``
    and ``pm_card_chargeDeclinedInsufficientFunds`` decline, leaving a PaymentIntent in
    ``requires_payment_method``); any other ``pm_…`` is unknown (PermanentError ``resource_missing``),
    unless listed in ``payment_methods``. Idempotency keys are forgotten after
    ``idempotency_ttl_s`` of its clock, which ``advance_clock`` moves forward, as the sandbox's.

    Parameters:
        fail_with: raised by every call (see ``fail_next`` for one-off failures).
        payment_methods: extra payment method ids that hold successfully.
        idempotency_ttl_s: how long a key is kept (Stripe: 24 h).
    """

    def __init__(
        self,
        *,
        fail_with: Exception | None = None,
        payment_methods: frozenset[str] = frozenset(),
        idempotency_ttl_s: float = STRIPE_IDEMPOTENCY_TTL_S,
    ) -> None:
        super().__init__(fail_with=fail_with)
        self.payment_methods = STRIPE_TEST_CARDS | payment_methods
        self.idempotency_ttl_s = idempotency_ttl_s
        self._intents: dict[str, _Intent] = {}
        self._by_key: dict[str, str] = {}
        #: Release idempotency key -> the PaymentIntent it cancelled.
        self._released_by_key: dict[str, str] = {}
        #: Idempotency key -> when it was first used, on this fake's clock.
        self._key_used_at: dict[str, float] = {}
        self._advanced_s = 0.0
        self._ids = itertools.count(1)

    # -- the Protocol -----------------------------------------------------------------------------

    def place_hold(
        self,
        *,
        offer_id: str,
        amount_cents: int,
        currency: str,
        payment_method_id: str,
        metadata: dict[str, str],
        first_attempt: bool = False,
    ) -> Hold:
        """See ``interfaces.Payments.place_hold``."""
        self._enter(
            "place_hold",
            offer_id=offer_id,
            amount_cents=amount_cents,
            currency=currency,
            payment_method_id=payment_method_id,
            metadata=metadata,
            first_attempt=first_attempt,
        )
        found = [] if first_attempt else self.holds_for(offer_id)[::-1]
        plan = adopt_or_key(found, offer_id=offer_id, amount_cents=amount_cents, currency=currency)
        if isinstance(plan, Hold):
            return plan
        params = {
            "amount": amount_cents,
            "currency": currency.lower(),
            "payment_method": payment_method_id,
            "metadata": {**metadata, "offer_id": offer_id},
        }
        key = plan
        if self._kept(key) and key in self._by_key:  # Stripe replays the first response under the same key
            intent = self._intents[self._by_key[key]]
            if intent.params != params:
                raise PermanentError(
                    "stripe",
                    "IdempotencyError",
                    "Keys for idempotent requests can only be used with the same parameters",
                    400,
                )
            return self._outcome(intent)
        if payment_method_id not in self.payment_methods:
            raise PermanentError("stripe", "resource_missing", f"No such PaymentMethod: '{payment_method_id}'", 400)
        decline = STRIPE_TEST_DECLINES.get(payment_method_id)
        pi_id = f"pi_fake{next(self._ids):06d}"
        status = "requires_payment_method" if decline else "requires_capture"
        hold = Hold(pi_id, status, amount_cents, currency.lower(), offer_id, int(self._now()))
        intent = _Intent(hold, params, decline)
        self._intents[pi_id] = intent
        self._by_key[key] = pi_id
        self._key_used_at[key] = self._now()
        return self._outcome(intent)

    def release_hold(self, *, offer_id: str, payment_intent_id: str) -> str:
        """See ``interfaces.Payments.release_hold``."""
        self._enter("release_hold", offer_id=offer_id, payment_intent_id=payment_intent_id)
        key = f"offer:{offer_id}:release"
        if self._kept(key) and key in self._released_by_key:
            if self._released_by_key[key] != payment_intent_id:  # same key, another PaymentIntent's URL
                raise PermanentError(
                    "stripe",
                    "IdempotencyError",
                    "Keys for idempotent requests can only be used for the same endpoint",
                    400,
                )
            return "canceled"  # Stripe replays the first (successful) cancel
        intent = self._intent(payment_intent_id)
        status = intent.hold.status
        if status == "succeeded":
            raise PermanentError(
                "stripe", "payment_intent_captured", f"cannot release {payment_intent_id}: it is {status}", 400
            )
        if status != "canceled":
            intent.hold = replace(intent.hold, status="canceled")
            # Only a cancel that ran stores its response under the key; a no-op on a canceled
            # PaymentIntent is Stripe's "unexpected state" error, which the adapter reads as released.
            self._released_by_key[key] = payment_intent_id
            self._key_used_at[key] = self._now()
        return "canceled"

    def get_hold(self, payment_intent_id: str) -> Hold:
        """See ``interfaces.Payments.get_hold``."""
        self._enter("get_hold", payment_intent_id=payment_intent_id)
        return self._intent(payment_intent_id).hold

    def list_holds(self, *, status: str | None = None, after: str | None = None) -> Iterator[Hold]:
        """See ``interfaces.Payments.list_holds``."""
        self._enter("list_holds", status=status, after=after)
        holds = [i.hold for i in reversed(self._intents.values())]
        if after is not None:
            ids = [h.payment_intent_id for h in holds]
            holds = holds[ids.index(after) + 1 :] if after in ids else []
        return iter([h for h in holds if status is None or h.status == status])

    # -- for tests --------------------------------------------------------------------------------

    def holds_for(self, offer_id: str) -> list[Hold]:
        """Every PaymentIntent placed for ``offer_id`` (not recorded as a call)."""
        return [i.hold for i in self._intents.values() if i.hold.offer_id == offer_id]

    def capture(self, payment_intent_id: str) -> Hold:
        """Capture a hold, as a settlement outside the saga would (not recorded as a call)."""
        intent = self._intent(payment_intent_id)
        intent.hold = replace(intent.hold, status="succeeded")
        return intent.hold

    def expire(self, payment_intent_id: str) -> Hold:
        """Let the authorization lapse: Stripe cancels it (not recorded as a call)."""
        intent = self._intent(payment_intent_id)
        intent.hold = replace(intent.hold, status="canceled")
        return intent.hold

    def advance_clock(self, seconds: float) -> None:
        """Move this fake's clock forward, as ``sandbox.advance_clock`` does the sandbox's (not a call)."""
        self._advanced_s += seconds

    def _now(self) -> float:
        return time.time() + self._advanced_s

    def _kept(self, key: str) -> bool:
        """Whether Stripe still keeps ``key``: it forgets one ``idempotency_ttl_s`` after its first use."""
        used_at = self._key_used_at.get(key)
        return used_at is not None and self._now() - used_at < self.idempotency_ttl_s

    def _intent(self, payment_intent_id: str) -> _Intent:
        try:
            return self._intents[payment_intent_id]
        except KeyError:
            raise PermanentError(
                "stripe", "resource_missing", f"No such payment_intent: '{payment_intent_id}'", 404
            ) from None

    @staticmethod
    def _outcome(intent: _Intent) -> Hold:
        if intent.decline is None:
            return intent.hold
        _, decline_code = intent.decline
        reason: RejectionReason = "insufficient_funds" if decline_code == "insufficient_funds" else "payment_declined"
        raise OfferRejected(reason, decline_code)


# --- risk -----------------------------------------------------------------------------------------


class FakeRiskScoring(_Scripted):
    """``RiskScoring`` with a score per buyer.

    Parameters:
        scores: buyer id -> score in [0, 1].
        default: the score of any other buyer.
        fail_with: raised by every call (see ``fail_next``).
    """

    def __init__(
        self, *, scores: Mapping[str, float] | None = None, default: float = 0.1, fail_with: Exception | None = None
    ) -> None:
        super().__init__(fail_with=fail_with)
        self.scores = dict(scores or {})
        self.default = default

    def score_order(self, order: OrderToScore) -> RiskScore:
        """See ``interfaces.RiskScoring.score_order``."""
        self._enter("score_order", order=order)
        return RiskScore(self.scores.get(order.buyer_id, self.default))


# --- bank funds -----------------------------------------------------------------------------------


class FakeBankFunds(_Scripted):
    """``BankFunds`` with balances and return risks per access token.

    Parameters:
        balances: access token -> available balance in cents (any account id on the item).
        return_risks: access token -> ``ReturnRisk``.
        default_balance: the balance of any other token.
        default_return_risk: the return risk of any other token (default: 10 on both scores).
        item_errors: access token -> the error every call with it raises (e.g. ``ITEM_LOGIN_REQUIRED``).
        fail_with: raised by every call (see ``fail_next``).
    """

    def __init__(
        self,
        *,
        balances: Mapping[str, int] | None = None,
        return_risks: Mapping[str, ReturnRisk] | None = None,
        default_balance: int = 5_000_000,
        default_return_risk: ReturnRisk | None = None,
        item_errors: Mapping[str, Exception] | None = None,
        fail_with: Exception | None = None,
    ) -> None:
        super().__init__(fail_with=fail_with)
        self.balances = dict(balances or {})
        self.return_risks = dict(return_risks or {})
        self.default_balance = default_balance
        self.default_return_risk = default_return_risk or ReturnRisk(10, 10)
        self.item_errors = dict(item_errors or {})

    def balance(self, *, access_token: str, account_id: str) -> Balance:
        """See ``interfaces.BankFunds.balance``."""
        self._enter("balance", access_token=access_token, account_id=account_id)
        self._item(access_token)
        return Balance(account_id, self.balances.get(access_token, self.default_balance))

    def return_risk(self, *, offer_id: str, access_token: str, account_id: str, amount_cents: int) -> ReturnRisk:
        """See ``interfaces.BankFunds.return_risk``."""
        self._enter(
            "return_risk",
            offer_id=offer_id,
            access_token=access_token,
            account_id=account_id,
            amount_cents=amount_cents,
        )
        self._item(access_token)
        return self.return_risks.get(access_token, self.default_return_risk)

    def _item(self, access_token: str) -> None:
        error = self.item_errors.get(access_token)
        if error is not None:
            raise error


# --- auction events -------------------------------------------------------------------------------


class FakeAuctionEvents(_Scripted):
    """``AuctionEvents`` that keeps what it published.

    Like EventBridge it does not deduplicate: publishing the same ``event_id`` twice records two
    puts, and consumers (tests) drop repeats by ``event_id``.

    Parameters:
        fail_with: raised by every call (see ``fail_next``).
        sns_fail_with: raised after the bus put, as a failed SNS publish would be.
    """

    def __init__(self, *, fail_with: Exception | None = None, sns_fail_with: Exception | None = None) -> None:
        super().__init__(fail_with=fail_with)
        self.sns_fail_with = sns_fail_with
        #: Every event put on the bus: (detail_type, detail with event_id), oldest first.
        self.bus: list[tuple[str, dict[str, Any]]] = []
        #: Every SNS notification: (topic ARN, event_id, detail_type), oldest first.
        self.notified: list[tuple[str, str, str]] = []
        self._ids = itertools.count(1)

    def publish(
        self, *, event_id: str, detail_type: str, detail: dict[str, Any], sns_topic_arn: str | None
    ) -> Published:
        """See ``interfaces.AuctionEvents.publish``."""
        self._enter("publish", event_id=event_id, detail_type=detail_type, detail=detail, sns_topic_arn=sns_topic_arn)
        self.bus.append((detail_type, {**detail, "event_id": event_id}))
        bus_event_id = f"fake-event-{next(self._ids)}"
        if not sns_topic_arn:
            return Published(event_id, bus_event_id)
        if self.sns_fail_with is not None:
            raise self.sns_fail_with
        self.notified.append((sns_topic_arn, event_id, detail_type))
        return Published(event_id, bus_event_id, f"fake-message-{bus_event_id}")

    def event_ids(self, detail_type: str | None = None) -> list[str]:
        """The event ids put on the bus (repeats included), optionally of one detail type."""
        return [d["event_id"] for t, d in self.bus if detail_type is None or t == detail_type]


# --- audit archive --------------------------------------------------------------------------------


@dataclass
class _Object:
    body: bytes
    storage_class: str
    checksum_sha256: str | None
    version_id: str
    restore: str | None = None
    #: The compliance retention's end: the version cannot be deleted before then (None: no retention).
    retain_until: datetime | None = None
    legal_hold: bool = False
    #: A delete marker: the key reads as missing, its earlier versions are kept.
    delete_marker: bool = False


class FakeArchive(_Scripted):
    """``Archive`` in memory, with S3's checksum check, Glacier's restore rules and Object Lock's.

    Every put adds a version in compliance mode until ``retention_days`` from this fake's clock
    (which ``advance_clock`` moves forward); ``delete`` refuses a version still under retention or
    a legal hold, as S3 does.

    Parameters:
        storage_class: the class exports are written in (manifests and anchors are always ``STANDARD``).
        restore_polls: how many ``head`` calls a requested restore takes to finish; None: it never
            finishes (Glacier Standard takes hours), so ``restore`` raises RestoreInProgress.
        retention_days: each version's compliance retention (``audit_retention_days``).
        fail_with: raised by every call (see ``fail_next``).
    """

    def __init__(
        self,
        *,
        bucket: str = "offers-audit",
        storage_class: str = "GLACIER",
        restore_polls: int | None = 0,
        retention_days: int = 400,
        fail_with: Exception | None = None,
    ) -> None:
        super().__init__(fail_with=fail_with)
        self.bucket = bucket
        self.storage_class = storage_class
        self.restore_polls = restore_polls
        self.retention_days = retention_days
        self.objects: dict[str, list[_Object]] = {}
        self._pending: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._advanced = timedelta(0)

    def put_export(self, key: str, body: IO[bytes], sha256_hex: str, metadata: dict[str, str]) -> StoredObject:
        """See ``interfaces.Archive.put_export``; a body that does not match ``sha256_hex`` is refused."""
        self._enter("put_export", key=key, sha256_hex=sha256_hex, metadata=metadata)
        data = body.read()
        if hashlib.sha256(data).hexdigest() != sha256_hex:
            raise PermanentError(
                "aws", "BadDigest", "The SHA256 you specified did not match the calculated checksum.", 400
            )
        return self._put(key, data, self.storage_class)

    def put_manifest(self, key: str, body: bytes) -> StoredObject:
        """See ``interfaces.Archive.put_manifest``."""
        self._enter("put_manifest", key=key)
        return self._put(key, body, "STANDARD")

    def put_anchor(self, key: str, body: bytes) -> StoredObject:
        """See ``interfaces.Archive.put_anchor``."""
        self._enter("put_anchor", key=key)
        return self._put(key, body, "STANDARD")

    def head(self, key: str) -> ArchivedObject:
        """See ``interfaces.Archive.head``; each call moves a pending restore one poll on."""
        self._enter("head", key=key)
        obj = self._latest(key)
        if key in self._pending:
            self._pending[key] -= 1
            if self._pending[key] < 0:
                del self._pending[key]
                obj.restore = 'ongoing-request="false", expiry-date="Fri, 01 Jan 2100 00:00:00 GMT"'
        return ArchivedObject(
            key=key,
            storage_class=obj.storage_class,
            restore=obj.restore,
            checksum_sha256=obj.checksum_sha256,
            server_side_encryption="AES256",
            version_id=obj.version_id,
            size=len(obj.body),
        )

    def versions(self, key: str) -> list[ObjectVersion]:
        """See ``interfaces.Archive.versions``."""
        self._enter("versions", key=key)
        stored = self.objects.get(key, [])
        return [ObjectVersion(key, o.version_id, o is stored[-1]) for o in stored if not o.delete_marker][::-1]

    def histories(self, prefix: str) -> list[KeyHistory]:
        """See ``interfaces.Archive.histories``."""
        self._enter("histories", prefix=prefix)
        found = []
        for key in sorted(k for k in self.objects if k.startswith(prefix)):
            stored = self.objects[key]
            versions = [ObjectVersion(key, o.version_id, o is stored[-1]) for o in stored if not o.delete_marker][::-1]
            if versions:
                found.append(KeyHistory(key, versions, hidden=stored[-1].delete_marker))
        return found

    def restore(
        self, key: str, *, days: int = 1, tier: str = "Standard", timeout_s: float = 600, poll_s: float = 1
    ) -> None:
        """See ``interfaces.Archive.restore``; polls without sleeping."""
        self._enter("restore", key=key, days=days, tier=tier)
        head = self.head(key)
        if head.readable:
            return
        if 'ongoing-request="true"' in (head.restore or ""):
            raise RestoreInProgress(self.bucket, key)
        self._latest(key).restore = 'ongoing-request="true"'
        if self.restore_polls is None:
            raise RestoreInProgress(self.bucket, key)
        self._pending[key] = self.restore_polls
        while not self.head(key).readable:
            pass

    def download(self, key: str, into: IO[bytes]) -> None:
        """See ``interfaces.Archive.download``."""
        self._enter("download", key=key)
        into.write(self._readable(key).body)

    def read(self, key: str, version_id: str | None = None) -> bytes:
        """See ``interfaces.Archive.read``."""
        self._enter("read", key=key, version_id=version_id)
        return self._readable(key, version_id).body

    def lock(self, key: str, version_id: str | None = None) -> ObjectLock:
        """See ``interfaces.Archive.lock``."""
        self._enter("lock", key=key, version_id=version_id)
        obj = self._version(key, version_id)
        return ObjectLock("COMPLIANCE" if obj.retain_until else None, obj.retain_until, obj.legal_hold)

    def set_legal_hold(self, key: str, on: bool, version_id: str | None = None) -> None:
        """See ``interfaces.Archive.set_legal_hold``."""
        self._enter("set_legal_hold", key=key, on=on)
        if version_id is None:
            self._latest(key).legal_hold = on
            return
        obj = next((o for o in self.objects.get(key, []) if o.version_id == version_id), None)
        if obj is None:
            raise PermanentError("aws", "NoSuchVersion", "The specified version does not exist.", 404)
        obj.legal_hold = on

    def lock_enabled(self) -> bool:
        """See ``interfaces.Archive.lock_enabled``: always, as the sandbox creates its bucket."""
        self._enter("lock_enabled")
        return True

    def delete(self, key: str, version_id: str | None = None) -> None:
        """Delete as S3 does on a bucket with Object Lock (not a call: the archive never deletes).

        Without ``version_id``, a delete marker hides the key and every version is kept; a version
        still under retention or a legal hold is refused (PermanentError ``AccessDenied``, 403).
        """
        if version_id is None:
            marker = _Object(b"", "STANDARD", None, f"v{next(self._ids)}", delete_marker=True)
            self.objects.setdefault(key, []).append(marker)
            return
        stored = self.objects.get(key, [])
        obj = next((o for o in stored if o.version_id == version_id), None)
        if obj is None:
            return  # S3 answers 204 for a version it does not have
        if obj.legal_hold or (obj.retain_until is not None and obj.retain_until > self._now()):
            raise PermanentError("aws", "AccessDenied", "Access Denied", 403)
        stored.remove(obj)
        if not stored:
            del self.objects[key]

    def advance_clock(self, seconds: float) -> None:
        """Move this fake's clock forward: retentions end on it (not a call)."""
        self._advanced += timedelta(seconds=seconds)

    def _now(self) -> datetime:
        return datetime.now(UTC) + self._advanced

    def _put(self, key: str, data: bytes, storage_class: str) -> StoredObject:
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
        until = self._now() + timedelta(days=self.retention_days)
        obj = _Object(data, storage_class, checksum, f"v{next(self._ids)}", retain_until=until)
        self.objects.setdefault(key, []).append(obj)
        return StoredObject(key, obj.version_id, checksum)

    def _latest(self, key: str) -> _Object:
        stored = self.objects.get(key)
        if not stored or stored[-1].delete_marker:
            raise PermanentError("aws", "404", "Not Found", 404)  # what HEAD of a missing key gives botocore
        return stored[-1]

    def _version(self, key: str, version_id: str | None) -> _Object:
        if version_id is None:
            return self._latest(key)
        for obj in self.objects.get(key, []):
            if obj.version_id == version_id and not obj.delete_marker:
                return obj
        raise PermanentError("aws", "NoSuchVersion", "The specified version does not exist.", 404)

    def _readable(self, key: str, version_id: str | None = None) -> _Object:
        obj = self._version(key, version_id)
        if obj.storage_class in NEEDS_RESTORE and 'ongoing-request="false"' not in (obj.restore or ""):
            raise PermanentError(
                "aws", "InvalidObjectState", "The operation is not valid for the object's storage class", 403
            )
        return obj


#: "The partner is down": the TransientError each adapter raises when its partner answers 503 (as the
#: sandbox's fault injection makes it), for ``fail_with`` / ``fail_next``.
PARTNER_DOWN: dict[str, TransientError] = {
    "stripe": TransientError("stripe", "APIError", "An unknown error occurred", 503),
    "sift": TransientError("sift", "status_-1", "Unexpected Server Error", 503),
    "plaid": TransientError("plaid", "INTERNAL_SERVER_ERROR", "an unexpected error occurred", 503),
    "aws": TransientError("aws", "ServiceUnavailable", "Service Unavailable", 503),
}
