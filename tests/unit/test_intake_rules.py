"""Intake's decisions: the call's own arguments, the claimed id, the admission gate, resubmits."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from offers_workers.domain import states
from offers_workers.domain.payload import OFFER_ID
from offers_workers.saga import decisions
from offers_workers.saga.decisions import Dispatch, Gate


@dataclass(frozen=True)
class Admission:
    admitted: bool
    wait_s: float = 0.0
    refused: bool = False


def test_a_well_formed_call_has_no_argument_errors() -> None:
    assert decisions.submit_argument_errors({"offer_id": "off_1"}, {}) == []


def test_a_missing_offer_is_named() -> None:
    errors = decisions.submit_argument_errors(None, {})
    assert [(e.field, e.code) for e in errors] == [("offer", "missing")]


def test_unexpected_arguments_are_named_in_order_and_win_over_a_missing_offer() -> None:
    errors = decisions.submit_argument_errors(None, {"b": 1, "a": 2})
    assert [(e.field, e.code) for e in errors] == [("a", "unexpected_argument"), ("b", "unexpected_argument")]


@pytest.mark.parametrize(
    ("raw", "claimed"),
    [
        ({"offer_id": "off_1"}, "off_1"),
        ({"offer_id": "x" * 64}, "x" * 64),
        ({"offer_id": "x" * 65}, None),
        ({"offer_id": "off 1"}, None),
        ({"offer_id": 17}, None),
        ({}, None),
        (["off_1"], None),
        ("off_1", None),
        (None, None),
    ],
)
def test_only_a_well_formed_claimed_offer_id_is_kept_with_a_rejection(raw, claimed) -> None:
    assert decisions.claimed_offer_id(raw) == claimed


@pytest.mark.parametrize("offer_id", ["a", "A-9_z", "x" * 64])
def test_the_offer_id_pattern_matches_the_payloads(offer_id) -> None:
    assert OFFER_ID.fullmatch(offer_id)


@pytest.mark.parametrize(
    ("submission_on", "soft_launch", "open_"),
    [(True, False, True), (True, True, False), (False, False, False), (False, True, False)],
)
def test_the_door_is_simply_open_only_with_submission_on_and_no_soft_launch(submission_on, soft_launch, open_) -> None:
    assert decisions.door_open(submission_on, soft_launch) is open_


def test_submission_off_refuses_every_offer() -> None:
    gate = decisions.admission_gate(False, None)
    assert gate is not None and gate.wait_s == 0
    assert (gate.error.field, gate.error.code) == ("offer", "submission_disabled")
    assert decisions.admission_gate(False, Admission(True)) == gate


def test_an_admitted_offer_passes_the_soft_launch() -> None:
    assert decisions.admission_gate(True, Admission(True)) is None


@pytest.mark.parametrize("wait_s", [0.01, 1.5, 30.0])
def test_over_the_rate_an_offer_waits_and_is_never_rejected(wait_s) -> None:
    assert decisions.admission_gate(True, Admission(False, wait_s=wait_s)) == Gate(wait_s=wait_s)


def test_a_maker_off_the_allow_list_is_refused() -> None:
    gate = decisions.admission_gate(True, Admission(False, refused=True))
    assert gate is not None and gate.error is not None
    assert (gate.error.field, gate.error.code) == ("maker_id", "submission_disabled")


@pytest.mark.parametrize(
    ("refused", "synthetic", "exempt"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_only_a_refused_synthetic_offer_may_ask_again_as_the_journeys_maker(refused, synthetic, exempt) -> None:
    assert decisions.may_exempt(Admission(False, refused=refused), synthetic=synthetic) is exempt


@pytest.mark.parametrize("state", states.ALL_STATES)
def test_the_same_body_again_is_a_duplicate_handed_on_only_while_received(state) -> None:
    resubmit = decisions.on_resubmit("off_1", stored_sha256="abc", body_sha256="abc", stored_state=state)
    assert resubmit.outcome == "duplicate"
    expected = [Dispatch("offers.stage.validate", {"offer_id": "off_1"})] if state == states.RECEIVED else []
    assert resubmit.dispatches == expected


@pytest.mark.parametrize("state", states.ALL_STATES)
def test_another_body_under_the_same_id_is_a_conflict_whatever_the_state(state) -> None:
    resubmit = decisions.on_resubmit("off_1", stored_sha256="abc", body_sha256="def", stored_state=state)
    assert (resubmit.outcome, resubmit.dispatches) == ("duplicate_conflict", [])


def test_the_conflict_is_recorded_against_the_offer_id() -> None:
    error = decisions.duplicate_conflict_error()
    assert (error.field, error.code) == ("offer_id", "duplicate_conflict")
    assert "duplicate_conflict" in states.REJECTION_REASONS
