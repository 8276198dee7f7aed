"""The offer state machine, including the transitions it must refuse."""

from __future__ import annotations

import itertools

import pytest

from offers_workers.domain import states
from offers_workers.domain.states import IllegalTransition, can_transition, check_transition


def test_the_happy_path_is_walked_one_stage_at_a_time() -> None:
    for before, after in itertools.pairwise(states.HAPPY_PATH):
        assert can_transition(before, after)
        assert states.next_stage(before).to_state == after
    assert states.next_stage(states.SUBMITTED) is None


def test_no_stage_is_skipped() -> None:
    for i, before in enumerate(states.HAPPY_PATH):
        for after in states.HAPPY_PATH[i + 2 :]:
            assert not can_transition(before, after), (before, after)


def test_no_going_back() -> None:
    for before, after in itertools.combinations(states.HAPPY_PATH, 2):
        assert not can_transition(after, before), (after, before)


def test_rejected_and_cancelled_are_final() -> None:
    for final in (states.REJECTED, states.CANCELLED):
        for target in states.ALL_STATES:
            with pytest.raises(IllegalTransition):
                check_transition(final, target)


def test_a_submitted_offer_can_still_be_cancelled_but_not_rejected() -> None:
    assert can_transition(states.SUBMITTED, states.CANCELLED)
    assert not can_transition(states.SUBMITTED, states.REJECTED)
    assert not can_transition(states.SUBMITTED, states.DEAD_LETTERED)


def test_an_open_offer_can_end_any_way() -> None:
    for state in states.OPEN:
        for outcome in (states.REJECTED, states.CANCELLED, states.DEAD_LETTERED):
            assert can_transition(state, outcome)


def test_a_dead_lettered_offer_resumes_where_it_stopped() -> None:
    for state in states.OPEN:
        assert can_transition(states.DEAD_LETTERED, state)
    assert not can_transition(states.DEAD_LETTERED, states.SUBMITTED)


def test_each_stage_has_its_own_queue_and_explicit_task_name() -> None:
    assert len({s.queue for s in states.STAGES}) == len(states.STAGES)
    assert all(s.task.startswith("offers.stage.") for s in states.STAGES)
