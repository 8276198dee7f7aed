"""What the saga asks of each partner: one Protocol per role, and the typed results they return.

The real adapters (``stripe_payments``, ``sift_risk``, ``plaid_funds``, ``aws_events``, ``aws_archive``,
``segment_funnel``) and the in-process fakes (``fakes``) both satisfy these. Every method raises only
the three buckets of ``offers_workers.domain.errors`` (the funnel raises none: it is best effort):

- ``OfferRejected``: a business outcome (a card decline); the offer ends ``rejected``.
- ``TransientError``: timeouts, refused connections, 5xx, 429; the same call may succeed later.
- ``PermanentError``: a retry cannot help (bad request, bad credentials, a malformed response).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, Protocol, runtime_checkable

from offers_workers.domain.errors import PermanentError

#: Connections a partner's client keeps open for reuse: at least worker_partners' 40 threads, so a
#: call under load never opens (and closes) one of its own (the SDKs keep 10 unless told).
KEPT_CONNECTIONS = 64


# --- typed results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hold:
    """A card hold: a manual-capture Stripe PaymentIntent.

    Parameters:
        payment_intent_id: Stripe's id (``pi_…``), stored on the offer.
        status: ``requires_capture`` while held; ``canceled`` once released or expired; ``succeeded``
            once captured.
        amount_cents: the authorised amount, in the currency's minor unit.
        currency: lower-case ISO code, as Stripe reports it.
        offer_id: the offer the hold was placed for (from its metadata); None for holds not ours.
        created: Unix time Stripe created it; left out of equality (a fake's clock is not Stripe's).
    """

    payment_intent_id: str
    status: str
    amount_cents: int
    currency: str
    offer_id: str | None = None
    created: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class OrderToScore:
    """What Sift is told about an offer (``email``, ``ip`` and ``session_id`` go to Sift, never to logs).

    Parameters:
        offer_id: Sift's ``$order_id``.
        buyer_id: Sift's ``$user_id``; the sandbox scores buyers named ``risky_*`` high.
        amount_cents: in minor units of ``currency``.
        payment_method: ``card`` or ``bank_account`` (or a Sift ``$payment_type``).
    """

    offer_id: str
    buyer_id: str
    amount_cents: int
    currency: str
    payment_method: str | None = None
    email: str | None = None
    ip: str | None = None
    session_id: str | None = None


@dataclass(frozen=True)
class RiskScore:
    """Sift's ``payment_abuse`` verdict on one offer; the saga compares ``score`` with its threshold.

    Parameters:
        score: in [0, 1]; higher is riskier.
        reasons: Sift's reasons for the score, as it words them (often empty).
    """

    score: float
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Balance:
    """A bank account's balance as Plaid reports it.

    Parameters:
        account_id: the Plaid account asked about.
        available_cents: available balance in cents, or the current balance where the institution
            reports no available one.
        from_current: True when ``available_cents`` is the current balance (no available reported).
    """

    account_id: str
    available_cents: int
    from_current: bool = False


@dataclass(frozen=True)
class ReturnRisk:
    """Plaid Signal's return-risk scores (1-99, higher is riskier) for debiting an account.

    Parameters:
        customer_initiated: risk the account holder disputes the debit; None if Signal gave none.
        bank_initiated: risk the bank returns it (NSF, closed account); None if Signal gave none.
    """

    customer_initiated: int | None
    bank_initiated: int | None

    @property
    def score(self) -> int:
        """The worse of the two: what the saga compares with its threshold."""
        return max(s for s in (self.customer_initiated, self.bank_initiated) if s is not None)


@dataclass(frozen=True)
class Published:
    """One offer event delivered to the auction.

    Parameters:
        event_id: our stable id, carried in the detail (consumers drop repeats by it).
        bus_event_id: EventBridge's id for this put (a new one on every retry).
        sns_message_id: SNS's message id, or None when no topic was given.
    """

    event_id: str
    bus_event_id: str
    sns_message_id: str | None = None


@dataclass(frozen=True)
class FunnelEvent:
    """One step of an offer's product funnel, as Segment tracks it.

    Parameters:
        event: the step's name (``Offer Submitted``); ``saga.funnel`` names them all.
        user_id: the buyer's id.
        properties: ids, amount and currency (and a rejection's reason): never an email, an IP or a secret.
        message_id: stable per offer and step, so Segment drops a repeat of the same step.
    """

    event: str
    user_id: str
    properties: dict[str, Any]
    message_id: str


@dataclass(frozen=True)
class StoredObject:
    """An object written to the audit archive.

    Parameters:
        key: its S3 key.
        version_id: S3's version id (None on an unversioned bucket).
        checksum_sha256: the base64 SHA-256 S3 checked the body against (None if none was sent).
    """

    key: str
    version_id: str | None = None
    checksum_sha256: str | None = None


@dataclass(frozen=True)
class ArchivedObject:
    """What the archive knows of one object (S3 ``HEAD``).

    Parameters:
        key: its S3 key.
        storage_class: ``GLACIER``, ``DEEP_ARCHIVE``, ``GLACIER_IR`` or ``STANDARD``.
        restore: S3's ``Restore`` header (``ongoing-request="true"|"false"…``); None if never asked.
        checksum_sha256: base64 SHA-256 S3 stored with it, if any.
        server_side_encryption: ``AES256`` or ``aws:kms``.
        version_id: the current version's id.
        size: length in bytes.
    """

    key: str
    storage_class: str
    restore: str | None = None
    checksum_sha256: str | None = None
    server_side_encryption: str | None = None
    version_id: str | None = None
    size: int = 0

    @property
    def readable(self) -> bool:
        """True when a GET works now: no restore needed, or a finished one."""
        return self.storage_class not in NEEDS_RESTORE or 'ongoing-request="false"' in (self.restore or "")


@dataclass(frozen=True)
class ObjectVersion:
    """One stored version of an archive key."""

    key: str
    version_id: str
    is_latest: bool


@dataclass(frozen=True)
class KeyHistory:
    """Every stored version of one key, newest first, and whether a delete marker hides it."""

    key: str
    versions: list[ObjectVersion]
    hidden: bool = False

    @property
    def first(self) -> ObjectVersion:
        """The version written first: the one the archive wrote (a later one is a rewrite)."""
        return self.versions[-1]


@dataclass(frozen=True)
class ObjectLock:
    """The S3 Object Lock on one version of an archive key.

    Parameters:
        mode: ``COMPLIANCE`` (what the archive writes) or ``GOVERNANCE``; None: no retention.
        retain_until: when the retention ends (UTC); None: no retention.
        legal_hold: True while a legal hold is on (no one deletes the version until it is lifted).
    """

    mode: str | None
    retain_until: datetime | None
    legal_hold: bool


#: How long Stripe keeps an idempotency key: a request whose key is older is a new request.
STRIPE_IDEMPOTENCY_TTL_S = 24 * 3600


def client_transaction_id(offer_id: str) -> str:
    """Stable per offer (Signal uses it as an idempotency key) and within Plaid's 36-character limit."""
    return "off-" + hashlib.sha256(offer_id.encode()).hexdigest()[:32]


def hold_key(offer_id: str, canceled: int = 0) -> str:
    """The idempotency key of an offer's hold. After ``canceled`` canceled holds the offer's next hold
    has a key of its own: under the first, Stripe would replay the first hold's answer for 24 hours."""
    return f"offer:{offer_id}:hold" + (f":{canceled + 1}" if canceled else "")


def adopt_or_key(found: Sequence[Hold], *, offer_id: str, amount_cents: int, currency: str) -> Hold | str:
    """Before placing an offer's hold: the hold to adopt, or the idempotency key to create one with.

    ``found`` is every PaymentIntent Stripe has for the offer, newest first. A live hold
    (``requires_capture``) is adopted, so a retry or a replay never places a second one, even after
    Stripe forgot the key; one for another amount or currency is refused, as Stripe refuses a key
    reused with other parameters. A captured one means the buyer was charged: refused too. Canceled
    ones (released, or lapsed) hold nothing: the offer gets a new hold, under a key of its own.
    Anything else (a decline) is created under the offer's key, whose answer Stripe replays.
    """
    live = [h for h in found if h.status == "requires_capture"]
    if live:
        hold = live[0]
        if (hold.amount_cents, hold.currency) != (amount_cents, currency.lower()):
            message = f"offer {offer_id} already holds {hold.payment_intent_id} for other parameters"
            raise PermanentError("stripe", "IdempotencyError", message, 400)
        return hold
    captured = [h.payment_intent_id for h in found if h.status == "succeeded"]
    if captured:
        message = f"offer {offer_id} was already charged ({captured[0]}); a new hold would charge twice"
        raise PermanentError("stripe", "payment_intent_captured", message, 400)
    return hold_key(offer_id, sum(h.status == "canceled" for h in found))


#: Storage classes whose objects must be restored before they can be read.
NEEDS_RESTORE = frozenset({"GLACIER", "DEEP_ARCHIVE"})


class RestoreInProgress(Exception):
    """An archived object's restore is requested and not finished yet (Glacier Standard: hours)."""

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(f"the restore of s3://{bucket}/{key} is requested and still in progress")
        self.bucket = bucket
        self.key = key


# --- the roles ----------------------------------------------------------------------------------


@runtime_checkable
class Payments(Protocol):
    """Card holds (Stripe PaymentIntents with manual capture)."""

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
        """Authorise ``amount_cents`` without capturing; normally returns status ``requires_capture``.

        Placing the same offer's hold again returns the same PaymentIntent, never a second hold:
        the offer's PaymentIntents are looked up first (``metadata.offer_id``) and a live hold is
        adopted, so this holds after Stripe forgot the idempotency key too (24 h); see
        ``adopt_or_key`` for captured and canceled ones. ``first_attempt`` says no earlier attempt
        for the offer ever started, so there is nothing to look up: the hold is created under the
        offer's first key at once (one request instead of two). Idempotency key ``offer:{offer_id}:hold``;
        the same offer with other parameters is a PermanentError. Raises OfferRejected
        (``payment_declined`` / ``insufficient_funds``) on a decline, TransientError on 5xx, 429, 409
        ``idempotency_key_in_use`` and lost connections, PermanentError on bad requests, unknown
        payment methods and bad keys.
        """
        ...

    def release_hold(self, *, offer_id: str, payment_intent_id: str) -> str:
        """Cancel the hold and return its final status, ``canceled``.

        Idempotency key ``offer:{offer_id}:release``, which belongs to one PaymentIntent (the same key
        for another one is a PermanentError ``IdempotencyError``); releasing an already-canceled hold
        returns ``canceled`` again. Raises PermanentError for a captured hold
        (``payment_intent_captured``) or an unknown one (``resource_missing``), TransientError as
        ``place_hold``.
        """
        ...

    def get_hold(self, payment_intent_id: str) -> Hold:
        """Look a hold up (a read: no idempotency key). PermanentError if Stripe does not know it."""
        ...

    def list_holds(self, *, status: str | None = None, after: str | None = None) -> Iterator[Hold]:
        """Every hold, newest first, optionally only those in ``status`` (for operators and drills);
        ``after``: continue after this PaymentIntent (Stripe's ``starting_after`` cursor)."""
        ...


@runtime_checkable
class RiskScoring(Protocol):
    """Fraud scoring of an offer (Sift ``$create_order`` with ``payment_abuse``)."""

    def score_order(self, order: OrderToScore) -> RiskScore:
        """Score the offer; the saga, not the partner, decides what score blocks it.

        No idempotency key: Sift records each call as an event, and scoring again is harmless.
        Raises TransientError on timeouts, refused connections, 5xx, 429 and Sift body statuses < 0
        or 60; PermanentError on a bad key, bad fields or a response without a score.
        """
        ...


@runtime_checkable
class BankFunds(Protocol):
    """Funds checks for bank-account offers (Plaid balance and Signal)."""

    def balance(self, *, access_token: str, account_id: str) -> Balance:
        """The account's balance (a read: no idempotency key).

        Raises TransientError on ``INSTITUTION_DOWN``/``INSTITUTION_NOT_RESPONDING``, rate limits, 5xx
        and lost connections; PermanentError on ``ITEM_LOGIN_REQUIRED``, invalid requests, an account
        not on the item or no balance at all.
        """
        ...

    def return_risk(self, *, offer_id: str, access_token: str, account_id: str, amount_cents: int) -> ReturnRisk:
        """Signal's return risk for debiting ``amount_cents``.

        Idempotency key: ``client_transaction_id(offer_id)``, so a retried stage refers to the same
        transaction. Errors as ``balance``; PermanentError if Signal returns no score at all.
        """
        ...


@runtime_checkable
class AuctionEvents(Protocol):
    """Offer events to the auction: EventBridge, then (optionally) an SNS topic."""

    def publish(
        self, *, event_id: str, detail_type: str, detail: dict[str, Any], sns_topic_arn: str | None
    ) -> Published:
        """Put one event on the bus, then notify the topic. At least once, never exactly once.

        EventBridge has no dedup: ``event_id`` goes into the detail and is the consumers' key for
        dropping repeats (a retry after a failed SNS publish puts the event again). Raises
        TransientError on throttling, internal failures, 5xx and lost connections (including a
        failed entry with a retryable code); PermanentError on anything else (access denied,
        malformed detail, an unknown bus or topic).
        """
        ...


@runtime_checkable
class Archive(Protocol):
    """The audit archive: S3 in a Glacier storage class, written nightly and restored to verify.

    S3 writes to one key are idempotent by content: an export re-run writes the same key. Every
    write is under Object Lock in compliance mode for ``audit_retention_days``: a write to an
    existing key adds a version, and no one deletes a version or shortens its retention before
    then. Every method raises TransientError on 5xx, throttling and lost connections (after the
    SDK's own retries) and PermanentError on anything else (access denied, no such bucket or key).
    """

    bucket: str

    def put_export(self, key: str, body: IO[bytes], sha256_hex: str, metadata: dict[str, str]) -> StoredObject:
        """Upload one export in the archive's storage class; S3 checks the SHA-256 given."""
        ...

    def put_manifest(self, key: str, body: bytes) -> StoredObject:
        """Upload a manifest in the standard class: readable without a restore."""
        ...

    def put_anchor(self, key: str, body: bytes) -> StoredObject:
        """Upload a chain anchor (a small JSON object) in the standard class, with a SHA-256 checksum."""
        ...

    def head(self, key: str) -> ArchivedObject:
        """What the archive knows of ``key``."""
        ...

    def versions(self, key: str) -> list[ObjectVersion]:
        """Every stored version of exactly ``key``."""
        ...

    def restore(
        self, key: str, *, days: int = 1, tier: str = "Standard", timeout_s: float = 600, poll_s: float = 1
    ) -> None:
        """Make ``key`` readable: ask for a restore if it needs one and wait up to ``timeout_s``.

        Raises RestoreInProgress when it is not readable by then, or at once when an earlier
        request is still running (the request stands; come back later).
        """
        ...

    def download(self, key: str, into: IO[bytes]) -> None:
        """Stream ``key`` into ``into`` (it must be readable: see ``restore``)."""
        ...

    def read(self, key: str, version_id: str | None = None) -> bytes:
        """The whole body of a small, readable object (a manifest): its latest version, or ``version_id``."""
        ...

    def histories(self, prefix: str) -> list[KeyHistory]:
        """Every key under ``prefix`` that holds a version, in key order, with its versions (one listing)."""
        ...

    def lock(self, key: str, version_id: str | None = None) -> ObjectLock:
        """The retention and legal hold of ``key``'s latest version, or of ``version_id``."""
        ...

    def set_legal_hold(self, key: str, on: bool, version_id: str | None = None) -> None:
        """Put a legal hold on ``key``'s latest version or ``version_id`` (``on``), or lift it."""
        ...

    def lock_enabled(self) -> bool:
        """Whether the archive's bucket has Object Lock enabled."""
        ...


@runtime_checkable
class Funnel(Protocol):
    """The product funnel (Segment): best effort, and never in the way of a stage."""

    def track(self, event: FunnelEvent) -> None:
        """Queue one event for a batch sent later; returns at once and never raises. An event that
        cannot be queued or sent is counted as unsent (``/metrics``), not retried forever."""
        ...

    def flush(self, timeout_s: float) -> None:
        """Send what is queued, waiting at most ``timeout_s``; what is left is counted as unsent."""
        ...
