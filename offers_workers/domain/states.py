"""The offer state machine: which state each saga stage takes an offer from and to.

``received → validated → payment_held → risk_cleared → auction_triggered → submitted``, with the
outcomes ``rejected``, ``cancelled`` and ``dead_lettered`` (waiting for an operator; resumable).
"""

from __future__ import annotations

from dataclasses import dataclass

RECEIVED = "received"
VALIDATED = "validated"
PAYMENT_HELD = "payment_held"
RISK_CLEARED = "risk_cleared"
AUCTION_TRIGGERED = "auction_triggered"
SUBMITTED = "submitted"
REJECTED = "rejected"
CANCELLED = "cancelled"
DEAD_LETTERED = "dead_lettered"

HAPPY_PATH = (RECEIVED, VALIDATED, PAYMENT_HELD, RISK_CLEARED, AUCTION_TRIGGERED, SUBMITTED)
ALL_STATES = (*HAPPY_PATH, REJECTED, CANCELLED, DEAD_LETTERED)
#: States no stage moves an offer out of (a submitted offer can still be cancelled).
TERMINAL = frozenset({REJECTED, CANCELLED})
#: States in which the saga still has work to do.
OPEN = frozenset({RECEIVED, VALIDATED, PAYMENT_HELD, RISK_CLEARED, AUCTION_TRIGGERED})

#: Reason codes of the contract.
REJECTION_REASONS = frozenset(
    {
        "invalid_payload",
        "submission_disabled",
        "duplicate_conflict",
        "listing_not_found",
        "listing_unavailable",
        "maker_mismatch",
        "currency_mismatch",
        "below_minimum",
        "below_auto_reject_threshold",
        "bank_payments_not_accepted",
        "payment_declined",
        "insufficient_funds",
        "risk_blocked",
    }
)
#: Why a message became an intake rejection rather than an offer (``intake rejections --reason``);
#: unauthenticated: a message whose task needs a sender it could not prove (README "Trust boundary").
INTAKE_REJECTION_REASONS = ("invalid_payload", "submission_disabled", "duplicate_conflict", "unauthenticated")
#: Reasons a cancel request (``offers.cancel``, ``offers-workers cancel``) may give.
CANCEL_REASONS = ("buyer_withdrew", "maker_rejected", "ops")
#: Who may send a cancel request.
CANCEL_ACTORS = ("buyer", "maker", "ops")
#: Every reason a cancelled offer may carry: a request's, or the maker SLA job's own.
CANCELLATION_REASONS = frozenset({*CANCEL_REASONS, "maker_sla_expired"})
#: What a cancel request did, as `cancel_requests.outcome` records it.
CANCEL_OUTCOMES = ("cancelled", "tombstone", "tombstone_applied", "already_cancelled", "already_rejected", "invalid")


@dataclass(frozen=True)
class Stage:
    """One step of the saga: the state it expects, the state it produces, its task and queue."""

    name: str
    from_state: str
    to_state: str
    task: str
    queue: str


STAGES = (
    Stage("validation", RECEIVED, VALIDATED, "offers.stage.validate", "offers.validation"),
    Stage("payment", VALIDATED, PAYMENT_HELD, "offers.stage.hold_payment", "offers.payment"),
    Stage("risk", PAYMENT_HELD, RISK_CLEARED, "offers.stage.score_risk", "offers.risk"),
    Stage("auction", RISK_CLEARED, AUCTION_TRIGGERED, "offers.stage.trigger_auction", "offers.auction"),
    Stage("audit", AUCTION_TRIGGERED, SUBMITTED, "offers.stage.complete", "offers.audit"),
)
STAGE_BY_NAME = {s.name: s for s in STAGES}
#: The stage that works on an offer sitting in a given state.
STAGE_FOR_STATE = {s.from_state: s for s in STAGES}

_ALLOWED = {s.from_state: {s.to_state} for s in STAGES}
for _state in OPEN:
    _ALLOWED[_state] |= {REJECTED, CANCELLED, DEAD_LETTERED}
_ALLOWED[SUBMITTED] = {CANCELLED}
# A dead-lettered offer resumes where it stopped (replay), or ends.
_ALLOWED[DEAD_LETTERED] = set(OPEN) | {REJECTED, CANCELLED}
_ALLOWED[REJECTED] = set()
_ALLOWED[CANCELLED] = set()


class IllegalTransition(Exception):
    def __init__(self, from_state: str, to_state: str) -> None:
        super().__init__(f"an offer cannot go from {from_state} to {to_state}")
        self.from_state = from_state
        self.to_state = to_state


def can_transition(from_state: str, to_state: str) -> bool:
    return to_state in _ALLOWED.get(from_state, set())


def check_transition(from_state: str, to_state: str) -> None:
    if not can_transition(from_state, to_state):
        raise IllegalTransition(from_state, to_state)


def next_stage(state: str) -> Stage | None:
    """The stage to run for an offer in ``state`` (None when the saga has nothing to do)."""
    return STAGE_FOR_STATE.get(state)
