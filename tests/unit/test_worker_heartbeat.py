"""The worker's heartbeat gives up on a broker it cannot reach.

Celery sends each worker-heartbeat event with kombu's retry and no policy: with the broker out of
reach, the worker's event loop reconnects for its heartbeat forever and does nothing else. The
fleet's consumer replaces that step (tasks/consumer_steps.py); these tests fence the replacement
against a Celery release that moves or changes what it replaces (tests/unit/test_celery_fences.py
fences the other replacements). The host-loss drill shows the effect.
"""

from __future__ import annotations

from typing import Any

from celery.worker import heartbeat
from celery.worker.consumer import Consumer

from tasks.consumer import FleetConsumer
from tasks.consumer_steps import HEARTBEAT_RETRY_POLICY, REPLACED_STEPS, HeartbeatSends


class RecordingDispatcher:
    enabled = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.on_enabled: set[Any] = set()
        self.on_disabled: set[Any] = set()

    def send(self, type: str, **fields: Any) -> None:
        self.sent.append((type, fields))


class ManualTimer:
    def __init__(self) -> None:
        self.repeated: list[Any] = []

    def call_repeatedly(self, interval: float, fun: Any, args: tuple[Any, ...]) -> object:
        self.repeated.append((fun, args))
        return object()

    def cancel(self, tref: object) -> None:
        pass


def test_every_step_the_fleet_replaces_is_still_one_of_celerys() -> None:
    celery_steps = Consumer.Blueprint.default_steps
    ours = FleetConsumer.Blueprint.default_steps
    for theirs, replacement in REPLACED_STEPS.items():
        assert sum(step.endswith(theirs) for step in celery_steps) == 1, f"Celery has no step {theirs} to replace"
        assert replacement in ours
        assert not any(step.endswith(theirs) and step.startswith("celery.") for step in ours)


def test_heartbeats_go_out_under_a_policy_that_gives_up() -> None:
    dispatcher, timer = RecordingDispatcher(), ManualTimer()
    heart = heartbeat.Heart(timer, HeartbeatSends(dispatcher), 2.0)
    heart.start()
    fun, args = timer.repeated[0]
    fun(*args)  # the timer's next heartbeat
    heart.stop()

    kinds = [kind for kind, _ in dispatcher.sent]
    assert kinds == ["worker-online", "worker-heartbeat", "worker-offline"]
    for kind, fields in dispatcher.sent:
        assert fields["retry_policy"] == HEARTBEAT_RETRY_POLICY, kind
    assert HEARTBEAT_RETRY_POLICY["max_retries"] is not None
    # Celery's own heartbeat would retry these with no limit
    assert dispatcher.sent[1][1]["retry"] is True
