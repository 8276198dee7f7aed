"""Poison messages: each start of a message is counted before its task runs and wiped when the run
returns, and a message delivered more than OFFERS_POISON_DELIVERIES times is dead-lettered, not run."""

from __future__ import annotations

import os
from typing import Any

import pytest
import redis
from celery import Celery

from config.settings import Settings
from offers_workers.runtime import Runtime
from tasks import base, deliveries, failpoints
from tasks.base import OffersTask


class FakeRedis:
    """The list commands tasks/deliveries.py uses, in memory; ``down`` makes every one fail."""

    def __init__(self) -> None:
        self.lists: dict[str, list[bytes]] = {}
        self.replies: list[Any] = []
        self.down = False

    def pipeline(self, transaction: bool = True) -> FakeRedis:
        self.replies = []
        return self

    def rpush(self, key: str, value: str) -> None:
        self.lists.setdefault(key, []).append(value.encode())
        self.replies.append(len(self.lists[key]))

    def expire(self, key: str, seconds: int) -> None:
        self.replies.append(True)

    def lrange(self, key: str, start: int, end: int) -> None:
        self.replies.append(list(self.lists.get(key, [])))

    def execute(self) -> list[Any]:
        if self.down:
            raise redis.ConnectionError("Redis is away")
        return self.replies

    def delete(self, key: str) -> None:
        self.lists.pop(key, None)


@pytest.fixture
def rt() -> Runtime:
    runtime = Runtime(Settings(sandbox=True, redis_key_prefix="t:", failpoints="crash_on_offer:pill-"))
    runtime.__dict__["redis"] = FakeRedis()
    return runtime


def request(task_id: str = "m1", **headers: Any) -> Any:
    from celery.app.task import Context

    return Context(id=task_id, hostname="core@host", called_directly=False, **headers)


def test_starts_that_never_returned_count_and_a_run_that_returns_wipes_them(rt: Runtime) -> None:
    # Given a message whose first two runs died (started, never finished)
    deliveries.start(rt, request())
    deliveries.start(rt, request())
    third = deliveries.start(rt, request())
    assert third is not None and (third.died, third.poisoned(3), third.poisoned(2)) == (2, False, True)
    # When the third run returns, however it ended
    deliveries.finish(rt, third)
    # Then the message's next delivery counts from one again; other messages never shared its count
    again = deliveries.start(rt, request())
    other = deliveries.start(rt, request("m2"))
    assert again is not None and other is not None and (again.died, other.died) == (0, 0)


def test_a_delivery_that_cannot_be_counted_runs_uncounted(rt: Runtime) -> None:
    fake: FakeRedis = rt.__dict__["redis"]
    fake.down = True
    assert deliveries.start(rt, request()) is None


def test_a_poison_messages_history_lists_every_delivery_and_rabbitmqs_count(rt: Runtime) -> None:
    for _ in range(3):
        delivery = deliveries.start(rt, request(**{"x-delivery-count": 2}))
    assert delivery is not None
    lines = delivery.history().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "delivery 1",
        "delivery 2",
        "delivery 3",
        "RabbitMQ's x-delivery-count",
    ]
    assert lines[0].endswith(f"on core@host (pid {os.getpid()}); the worker died")
    assert lines[2].endswith("not run, dead-lettered")
    assert str(deliveries.PoisonMessage(delivery)) == "delivered 2 times, the worker died each time; not run again"


class Recorded:
    """What an OffersTask did with a message: ran it, or dead-lettered it."""

    def __init__(self) -> None:
        self.ran: list[dict[str, Any]] = []
        self.dead_letters: list[dict[str, Any]] = []


@pytest.fixture
def submit(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Recorded]:
    seen = Recorded()
    monkeypatch.setattr(base, "get_runtime", lambda: rt)
    monkeypatch.setattr(base.deadletter, "record", lambda _rt, **entry: seen.dead_letters.append(entry) or 1)
    app = Celery("poison-test", set_as_current=False)

    @app.task(name="offers.submit", base=OffersTask, bind=True, stage="intake", shared=False)
    def task(self: OffersTask, offer: Any = None) -> None:
        seen.ran.append(offer)

    return task, seen


def deliver(task: Any, offer: dict[str, Any]) -> None:
    """One delivery of the same message, as a worker runs it."""
    task.push_request(id="m1", hostname="core@host", called_directly=False, retries=0)
    try:
        task(offer=offer)
    finally:
        task.pop_request()


def test_a_message_delivered_more_than_the_limit_is_dead_lettered_not_run(
    rt: Runtime, submit: tuple[Any, Recorded]
) -> None:
    task, seen = submit
    offer = {"offer_id": "off_1"}
    limit = rt.settings.poison_deliveries
    # Given a message whose worker died in each of its first `limit` runs (started, never returned)
    for _ in range(limit):
        deliveries.start(rt, request())
    # When it is delivered once more
    deliver(task, offer)
    # Then it is not run but dead-lettered at its stage, with its payload and its deliveries
    assert seen.ran == []
    [entry] = seen.dead_letters
    assert (entry["stage"], entry["kwargs"], entry["attempts"]) == ("intake", {"offer": offer}, limit)
    assert type(entry["error"]).__name__ == "PoisonMessage"
    assert len(entry["traceback_text"].splitlines()) == limit + 1
    # And a stray redelivery of it is dead-lettered again at once, never run
    deliver(task, offer)
    assert (seen.ran, len(seen.dead_letters)) == ([], 2)


def test_a_message_whose_runs_return_is_never_poisoned(rt: Runtime, submit: tuple[Any, Recorded]) -> None:
    task, seen = submit
    for _ in range(rt.settings.poison_deliveries + 3):
        deliver(task, {"offer_id": "off_1"})
    assert (len(seen.ran), seen.dead_letters) == (rt.settings.poison_deliveries + 3, [])


def test_the_failpoint_kills_the_worker_for_its_offers_only(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr(failpoints.os, "_exit", exits.append)
    failpoints.crash_if_armed(rt.settings, "off_1")
    failpoints.crash_if_armed(rt.settings, None)
    assert exits == []
    failpoints.crash_if_armed(rt.settings, "pill-42")
    assert exits == [1]
