"""The offer-event batcher (``partners/aws_events.EventPublisher``): how callers hand calls to each other.

Driven step by step, without sleeps and without moto: the publisher's AWS clients are fakes whose
calls wait until the test lets them answer, and every step waits for the state it needs (a call
made, an entry queued) before the next. What is checked: a caller queued behind calls on the wire
is carried by another caller's call and answered with its own result; a caller handed the lead
whose entry another call already carries waits for that call instead of making one or spinning;
an error reaches every caller of the batch it hit, and no other.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from config.settings import Settings
from offers_workers.domain.errors import PermanentError, TransientError
from offers_workers.partners import aws_events
from offers_workers.partners.aws_events import CALLS_AT_ONCE, EventPublisher
from offers_workers.partners.interfaces import Published

#: A safety net, never a pace: a step that waits this long has found a hang.
HANG_S = 10.0
TOPIC = "arn:aws:sns:us-east-1:000000000000:offers-submitted"


def waited(condition: threading.Condition, predicate: Callable[[], bool], what: str) -> None:
    with condition:
        assert condition.wait_for(predicate, timeout=HANG_S), f"hung waiting for {what}"


class FakeBus:
    """EventBridge's PutEvents as the publisher calls it: each call is recorded, then answers once
    the test releases it, with an EventId per entry, or as ``fail`` scripts it."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []  # the event ids each call carried, in call order
        self.released: set[int] = set()
        self.fail: dict[int, Exception] = {}  # call number -> raised by that call
        self.entry_errors: dict[str, str] = {}  # event id -> ErrorCode in the answer
        self.changed = threading.Condition()

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [json.loads(entry["Detail"])["event_id"] for entry in Entries]
        with self.changed:
            number = len(self.calls)
            self.calls.append(ids)
            self.changed.notify_all()
            assert self.changed.wait_for(lambda: number in self.released, timeout=HANG_S), f"call {number} held"
        if number in self.fail:
            raise self.fail[number]
        refused = self.entry_errors
        answers = [
            {"ErrorCode": refused[i], "ErrorMessage": "refused"} if i in refused else {"EventId": f"bus-{i}"}
            for i in ids
        ]
        return {"Entries": answers}

    def release(self, *numbers: int) -> None:
        with self.changed:
            self.released.update(numbers)
            self.changed.notify_all()

    def wait_for_calls(self, count: int) -> None:
        waited(self.changed, lambda: len(self.calls) >= count, f"{count} PutEvents calls")


class FakeTopics:
    """SNS's PublishBatch: answers at once, a MessageId per message, or raises ``fail`` for a topic."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.fail: dict[str, Exception] = {}

    def publish_batch(self, TopicArn: str, PublishBatchRequestEntries: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [e["MessageAttributes"]["event_id"]["StringValue"] for e in PublishBatchRequestEntries]
        self.calls.append((TopicArn, ids))
        if TopicArn in self.fail:
            raise self.fail[TopicArn]
        sent = zip(PublishBatchRequestEntries, ids, strict=True)
        return {"Successful": [{"Id": entry["Id"], "MessageId": f"sns-{i}"} for entry, i in sent]}


class Queue(list[Any]):
    """The publisher's queue of entries, telling the test each time a caller joins it."""

    def __init__(self) -> None:
        super().__init__()
        self.joined = 0
        self.changed = threading.Condition()

    def append(self, entry: Any) -> None:
        super().append(entry)
        with self.changed:
            self.joined += 1
            self.changed.notify_all()

    def wait_for_joined(self, count: int) -> None:
        waited(self.changed, lambda: self.joined >= count, f"{count} callers queued")


class WatchedWake(threading.Event):
    """A caller's wake that tells the test when the caller is blocked on it (waiting, and not set)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked = False
        self.changed = threading.Condition()

    def wait(self, timeout: float | None = None) -> bool:
        with self.changed:
            self.blocked = not self.is_set()
            self.changed.notify_all()
        try:
            return super().wait(timeout)
        finally:
            with self.changed:
                self.blocked = False
                self.changed.notify_all()


class Caller(threading.Thread):
    """One stage publishing one event, in a thread of its own; ``answer`` is its result or its error."""

    def __init__(self, publisher: EventPublisher, event_id: str, topic: str | None = None) -> None:
        super().__init__(name=f"caller-{event_id}", daemon=True)
        self.publisher, self.event_id, self.topic = publisher, event_id, topic
        self.answer: Published | Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            self.answer = self.publisher.publish(
                event_id=self.event_id,
                detail_type="OfferSubmitted",
                detail={"offer_id": "off_1"},
                sns_topic_arn=self.topic,
            )
        except Exception as exc:
            self.answer = exc

    def result(self) -> Published | Exception | None:
        self.join(HANG_S)
        assert not self.is_alive(), f"{self.name} still waiting"
        return self.answer


class Harness:
    def __init__(self, publisher: EventPublisher, bus: FakeBus, topics: FakeTopics, queue: Queue) -> None:
        self.publisher, self.bus, self.topics, self.queue = publisher, bus, topics, queue
        self.callers: list[Caller] = []

    def leaders(self, count: int) -> list[Caller]:
        """``count`` callers, each making a call of its own that the bus holds; in this order."""
        started = []
        for _ in range(count):
            calls = len(self.bus.calls)
            started.append(self.caller())
            self.bus.wait_for_calls(calls + 1)
        return started

    def queued(self, count: int, topic: str | None = None) -> list[Caller]:
        """``count`` callers that join the queue behind the calls on the wire; in this order."""
        started = []
        for _ in range(count):
            joined = self.queue.joined
            started.append(self.caller(topic))
            self.queue.wait_for_joined(joined + 1)
        with self.publisher._lock:  # each has decided whether it leads (it does not: every slot is taken)
            pass
        return started

    def caller(self, topic: str | None = None) -> Caller:
        caller = Caller(self.publisher, f"evt-{len(self.callers) + 1}", topic)
        self.callers.append(caller)
        return caller

    def finish(self) -> None:
        """Let every call answer, and every caller return."""
        self.bus.release(*range(100))
        for caller in self.callers:
            caller.result()


@pytest.fixture
def aws(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Harness]:
    publisher = EventPublisher(Settings(sandbox=True, state_dir=tmp_path))
    bus, topics, queue = FakeBus(), FakeTopics(), Queue()
    publisher._events, publisher._sns, publisher._waiting = bus, topics, queue
    harness = Harness(publisher, bus, topics, queue)
    yield harness
    harness.finish()  # nothing left waiting, whatever the test asserted
    assert publisher._calls == 0, "a call slot was never given back"


def bus_id(answer: Any) -> str:
    assert isinstance(answer, Published), answer
    return answer.bus_event_id


def test_a_caller_queued_behind_the_calls_on_the_wire_is_carried_by_the_next_callers_call(aws: Harness) -> None:
    # Given as many calls on the wire as the publisher makes at once, the bus holding each
    first, *others = aws.leaders(CALLS_AT_ONCE)
    assert aws.bus.calls == [[f"evt-{n}"] for n in range(1, CALLS_AT_ONCE + 1)]
    # and two more callers, who queue
    fifth, sixth = aws.queued(2)
    assert len(aws.bus.calls) == CALLS_AT_ONCE
    # When the first call answers (and the bus lets the next one through at once)
    aws.bus.release(0, CALLS_AT_ONCE)
    # Then its caller hands the lead to the one waiting longest, whose call carries both queued entries
    assert bus_id(first.result()) == "bus-evt-1"
    assert (bus_id(fifth.result()), bus_id(sixth.result())) == ("bus-evt-5", "bus-evt-6")
    assert aws.bus.calls[CALLS_AT_ONCE] == ["evt-5", "evt-6"]
    # while the other calls are still on the wire: one call more in all, none of the sixth's own
    assert all(caller.is_alive() for caller in others) and len(aws.bus.calls) == CALLS_AT_ONCE + 1
    aws.finish()
    assert [bus_id(caller.answer) for caller in others] == [f"bus-evt-{n}" for n in range(2, CALLS_AT_ONCE + 1)]
    assert len(aws.bus.calls) == CALLS_AT_ONCE + 1


def test_a_queued_caller_returns_only_once_the_call_carrying_its_entry_answers(aws: Harness) -> None:
    # Given calls on the wire and three callers queued behind them
    aws.leaders(CALLS_AT_ONCE)
    queued = aws.queued(3)
    # When the first call answers and the next one (carrying the three) is on the wire, held
    aws.bus.release(0)
    aws.bus.wait_for_calls(CALLS_AT_ONCE + 1)
    assert aws.bus.calls[CALLS_AT_ONCE] == ["evt-5", "evt-6", "evt-7"]
    # Then none of the three has returned: they wait for that call
    assert [caller.answer for caller in queued] == [None, None, None]
    assert all(caller.is_alive() for caller in queued)
    # And once it answers, each has its own result from it
    aws.bus.release(CALLS_AT_ONCE)
    assert [bus_id(caller.result()) for caller in queued] == ["bus-evt-5", "bus-evt-6", "bus-evt-7"]


def test_a_caller_handed_the_lead_after_another_call_took_its_entry_waits_for_that_call(
    aws: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two calls at once, for a short story: the hand-off is the same with any number
    monkeypatch.setattr(aws_events, "CALLS_AT_ONCE", 2)
    publisher = aws.publisher
    lead_taken, go_on, wake = threading.Event(), threading.Event(), WatchedWake()
    send_until_finished = publisher._send_until_finished

    def held_before_its_call(own: Any) -> None:
        if own.event_id == "evt-3":  # the caller handed the lead, held between the hand-off and its call
            # Its wake as the hand-off left it, set: the caller may be handed the lead before it waits
            own.wake = wake
            wake.set()
            lead_taken.set()
            assert go_on.wait(HANG_S)
        send_until_finished(own)

    monkeypatch.setattr(publisher, "_send_until_finished", held_before_its_call)
    # Given two calls on the wire and a third caller queued
    first, second = aws.leaders(2)
    (third,) = aws.queued(1)
    # When the first call answers, its caller hands the lead to the third
    aws.bus.release(0)
    assert lead_taken.wait(HANG_S) and bus_id(first.result()) == "bus-evt-1"
    # and the second call answers with nobody queued: a slot is free again
    aws.bus.release(1)
    assert bus_id(second.result()) == "bus-evt-2"
    # and a fourth caller, taking that slot, makes a call that carries the third's entry with its own
    fourth = aws.caller()
    aws.bus.wait_for_calls(3)
    assert aws.bus.calls[2] == ["evt-3", "evt-4"]
    # Then the third, let go with its entry already on the wire, makes no call: it blocks on its wake
    # (it does not spin on the hand-off's) until that call answers
    go_on.set()
    waited(wake.changed, lambda: wake.blocked, "the third caller to block on its wake")
    assert third.answer is None
    aws.bus.release(2)
    assert (bus_id(third.result()), bus_id(fourth.result())) == ("bus-evt-3", "bus-evt-4")
    assert len(aws.bus.calls) == 3, aws.bus.calls


def test_a_failed_call_fails_every_caller_it_carried_and_no_other(aws: Harness) -> None:
    # Given calls on the wire, and two callers queued behind them
    first, *others = aws.leaders(CALLS_AT_ONCE)
    fifth, sixth = aws.queued(2)
    # When the call carrying the two is throttled
    aws.bus.fail[CALLS_AT_ONCE] = ClientError(
        {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "PutEvents"
    )
    aws.bus.release(0, CALLS_AT_ONCE)
    # Then both hear of it, as a failure their stage retries; the caller that handed them the call does not
    for caller in (fifth, sixth):
        answer = caller.result()
        assert isinstance(answer, TransientError) and answer.code == "ThrottlingException", answer
    assert bus_id(first.result()) == "bus-evt-1"
    aws.finish()
    assert [bus_id(caller.answer) for caller in others] == [f"bus-evt-{n}" for n in range(2, CALLS_AT_ONCE + 1)]


def test_a_fault_of_ours_in_a_call_reaches_every_caller_of_it_and_the_lead_still_goes_on(aws: Harness) -> None:
    # Given calls on the wire, two callers queued, and the call that carries them on the wire too
    aws.leaders(CALLS_AT_ONCE)
    carried = aws.queued(2)
    aws.bus.release(0)
    aws.bus.wait_for_calls(CALLS_AT_ONCE + 1)
    # and a caller queued behind that call
    (behind,) = aws.queued(1)
    # When that call raises something that is not AWS's answer
    aws.bus.fail[CALLS_AT_ONCE] = RuntimeError("the fake's own fault")
    aws.bus.release(CALLS_AT_ONCE, CALLS_AT_ONCE + 1)
    # Then each caller it carried hears of it
    for caller in carried:
        answer = caller.result()
        assert isinstance(answer, PermanentError) and answer.code == "RuntimeError", answer
    # and the lead is handed on all the same: the caller behind gets a call of its own, and its answer
    assert bus_id(behind.result()) == "bus-evt-7"
    assert aws.bus.calls[CALLS_AT_ONCE + 1] == ["evt-7"]


def test_an_entry_the_bus_refuses_fails_its_own_caller_alone(aws: Harness) -> None:
    aws.leaders(CALLS_AT_ONCE)
    fifth, sixth, seventh = aws.queued(3)
    aws.bus.entry_errors["evt-6"] = "AccessDeniedException"
    aws.bus.release(0, CALLS_AT_ONCE)
    answer = sixth.result()
    assert isinstance(answer, PermanentError) and answer.code == "AccessDeniedException", answer
    assert (bus_id(fifth.result()), bus_id(seventh.result())) == ("bus-evt-5", "bus-evt-7")


def test_a_topic_that_fails_reaches_the_callers_notifying_it_and_no_other(aws: Harness) -> None:
    # Given callers queued behind the calls on the wire, two notifying a topic that fails, one none
    aws.leaders(CALLS_AT_ONCE)
    notifying = aws.queued(2, topic=TOPIC)
    (quiet,) = aws.queued(1)
    aws.topics.fail[TOPIC] = ClientError({"Error": {"Code": "InternalError", "Message": "oops"}}, "PublishBatch")
    # When their call goes out
    aws.bus.release(0, CALLS_AT_ONCE)
    # Then each of their callers hears of its failure, naming the topic; the third has its answer
    for caller in notifying:
        answer = caller.result()
        assert isinstance(answer, TransientError) and answer.sns_topic == "offers-submitted", answer
    assert bus_id(quiet.result()) == "bus-evt-7"
    # and one PublishBatch carried both notes
    assert aws.topics.calls == [(TOPIC, ["evt-5", "evt-6"])]
