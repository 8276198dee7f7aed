"""Fences around the private parts of Celery and kombu the fleet overrides, reads or writes.

Each override is written against one minor release of Celery and kombu (pinned in pyproject.toml).
These tests check that what each override relies on is still there with the shape it expects, and
where they can, that Celery or kombu still goes through it: a release that renames, moves or stops
calling one fails here, not silently in production. Each override names its test in a comment.
The worker-heartbeat step has its own (tests/unit/test_worker_heartbeat.py). No network: Celery's
in-memory transport, and redis-py's client with its replies stubbed.
"""

from __future__ import annotations

import inspect
import json
import sys
import tomllib
import uuid
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery import Celery
from celery.events import EventDispatcher
from celery.utils.imports import symbol_by_name
from celery.worker import control, heartbeat
from celery.worker.consumer import Consumer
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from celery.worker.consumer.events import Events
from celery.worker.consumer.heart import Heart
from celery.worker.request import Request
from kombu import Connection
from kombu.transport import redis as kombu_redis
from packaging.requirements import Requirement
from packaging.version import Version

from tasks import authority
from tasks.consumer import FleetConsumer
from tasks.consumer_steps import HEARTBEAT_RETRY_POLICY, REPLACED_STEPS, BoundedHeart, HeartbeatSends, fleet_steps
from tasks.redaction import RedactedRequest, conf
from tasks.redis_envelopes import GuardedChannel, GuardedSentinelChannel, RedisTransport, SentinelTransport
from tasks.task_events import BufferedEvents
from tasks.unreadable import RECORD_TASK, RecordingConsumer

ROOT = Path(__file__).resolve().parents[2]
#: The minor releases the overrides were written against; a new one is taken with these tests.
WRITTEN_AGAINST = {"celery": "5.7", "kombu": "5.7"}


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


# -- the pins ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("package", sorted(WRITTEN_AGAINST))
def test_celery_and_kombu_are_pinned_to_the_minor_the_overrides_were_written_against(package: str) -> None:
    minor = Version(WRITTEN_AGAINST[package])
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [r for r in map(Requirement, dependencies) if r.name == package]
    assert pin.specifier.contains(f"{minor}.0") and pin.specifier.contains(f"{minor}.99"), pin
    next_minor = f"{minor.major}.{minor.minor + 1}.0"
    assert not pin.specifier.contains(next_minor), f"{pin} admits {next_minor}: pin the minor the fences were run on"
    assert Version(version(package)).release[:2] == minor.release, f"installed {package} {version(package)}"


# -- the Redis envelope guard (tasks/redis_envelopes.py) ----------------------------------------------


def test_the_client_factory_and_the_reply_reader_the_guard_wraps_keep_their_signatures() -> None:
    assert parameters(kombu_redis.Channel._create_client) == ["self", "asynchronous"]
    assert inspect.signature(kombu_redis.Channel._create_client).parameters["asynchronous"].default is False
    # What the guard's parse_response stands in for: redis-py's, and kombu's key-prefixing one.
    for reader in (redis.Redis.parse_response, kombu_redis.PrefixedStrictRedis.parse_response):
        assert parameters(reader) == ["self", "connection", "command_name", "options"], reader
    assert isinstance(kombu_redis.Channel.sep, str) and kombu_redis.Channel.sep


def test_the_fleets_transports_use_the_guarded_channels() -> None:
    assert issubclass(RedisTransport, kombu_redis.Transport) and RedisTransport.Channel is GuardedChannel
    assert issubclass(SentinelTransport, kombu_redis.SentinelTransport)
    assert SentinelTransport.Channel is GuardedSentinelChannel
    assert issubclass(GuardedSentinelChannel, kombu_redis.SentinelChannel)
    # The guard's _create_client comes before the sentinel channel's own (which asks for the master).
    assert GuardedSentinelChannel._create_client is GuardedChannel._create_client


@pytest.fixture
def guarded_channel(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A channel of the fleet's Redis transport whose client answers BRPOP with ``popped[0]``; no Redis."""
    popped: list[Any] = []
    monkeypatch.setattr(authority, "sign", lambda *_: None)  # the record goes unsigned: no fleet key here
    monkeypatch.setattr(redis.Redis, "ping", lambda self, **_: True)
    monkeypatch.setattr(redis.Redis, "parse_response", lambda self, connection, command_name, **_: popped[0])
    with Connection("redis://redis.invalid:6379/0", transport=RedisTransport) as conn:
        channel = conn.default_channel
        delivered: list[tuple[dict[str, Any], str]] = []
        monkeypatch.setattr(channel.connection, "_deliver", lambda message, queue: delivered.append((message, queue)))
        yield SimpleNamespace(channel=channel, popped=popped, delivered=delivered)


def test_kombu_reads_a_popped_envelope_through_the_guarded_client(guarded_channel: Any) -> None:
    # Given a broken envelope popped from a priority list (kombu names it queue + sep + priority)
    channel = guarded_channel.channel
    key = channel._q_for_pri("offers.intake", 3)
    assert key != "offers.intake"
    guarded_channel.popped.append((key.encode(), b"{not json"))
    # When kombu reads the BRPOP's reply, as its event loop does
    assert channel._brpop_read() is True
    # Then what it delivers is the record of the envelope, to the queue it came from
    ((message, queue),) = guarded_channel.delivered
    assert queue == "offers.intake"
    assert message["headers"]["task"] == RECORD_TASK
    kwargs = json.loads(message["body"])[1]
    assert (kwargs["problem"], kwargs["raw"], kwargs["queue"]) == ("invalid_envelope", "{not json", "offers.intake")


def test_a_readable_envelope_goes_through_the_guard_as_it_came(guarded_channel: Any) -> None:
    info = {"exchange": "", "routing_key": "offers.intake"}
    properties = {"delivery_tag": "t1", "body_encoding": "base64", "delivery_info": info}
    envelope = {"body": "W10=", "headers": {}, "properties": properties}
    guarded_channel.popped.append((b"offers.intake", json.dumps(envelope).encode()))
    assert guarded_channel.channel._brpop_read() is True
    assert guarded_channel.delivered == [(envelope, "offers.intake")]


# -- the consumer (tasks/consumer.py, tasks/unreadable.py) and its steps (tasks/consumer_steps.py) ---


def test_every_replaced_step_is_one_of_celerys_defaults() -> None:
    celery_steps = list(Consumer.Blueprint.default_steps)
    ours = list(FleetConsumer.Blueprint.default_steps)
    assert ours == list(fleet_steps(celery_steps)) and len(ours) == len(celery_steps)
    for theirs, replacement in REPLACED_STEPS.items():
        (replaced,) = [step for step in celery_steps if step.endswith(theirs)]
        # Each replacement is a subclass of the very step it stands in for, at the same place
        assert issubclass(symbol_by_name(replacement), symbol_by_name(replaced)), (replacement, replaced)
        assert ours[celery_steps.index(replaced)] == replacement


def fleet_consumer(app: Celery, hub: Any = None) -> FleetConsumer:
    """The fleet's consumer as a worker builds it (every step applied), on the in-memory transport."""
    controller = SimpleNamespace(use_eventloop=False, state=None)
    return FleetConsumer(lambda *_: None, app=app, hub=hub, timer=None, pool=None, controller=controller)


def test_a_consumer_built_by_celery_runs_the_fleets_steps_in_place_of_celerys() -> None:
    consumer = fleet_consumer(Celery(broker="memory://", set_as_current=False))
    steps = {f"{type(step).__module__}:{type(step).__name__}" for step in consumer.blueprint.order}
    assert set(REPLACED_STEPS.values()) <= steps
    assert not {step for step in steps if step.startswith("celery.") and step.endswith(tuple(REPLACED_STEPS))}
    # Celery's Events step set the dispatcher through the fleet's property
    assert "_event_dispatcher" in consumer.__dict__ and consumer.event_dispatcher is None


def test_the_replaced_steps_start_as_the_fleet_expects() -> None:
    for step in (DelayedDelivery, Heart):
        assert parameters(step.start) == ["self", "c"], step
    assert parameters(heartbeat.Heart.__init__) == ["self", "timer", "eventer", "interval"]
    # Celery's heartbeat step keeps its interval where BoundedHeart reads it, and builds its Heart
    # from the consumer's timer and dispatcher, as BoundedHeart does
    dispatcher = SimpleNamespace(on_enabled=set(), on_disabled=set(), enabled=False, send=lambda *a, **k: None)
    started: dict[type, heartbeat.Heart] = {}
    for step_class in (Heart, BoundedHeart):
        consumer = SimpleNamespace(timer=SimpleNamespace(), event_dispatcher=dispatcher)
        step = step_class(consumer, heartbeat_interval=7.0)
        assert step.heartbeat_interval == 7.0
        step.start(consumer)
        started[step_class] = consumer.heart
    celerys, ours = started[Heart], started[BoundedHeart]
    assert (ours.timer, ours.interval) == (celerys.timer, celerys.interval) == (celerys.timer, 7.0)
    assert celerys.eventer is dispatcher and isinstance(ours.eventer, HeartbeatSends)


def test_a_heartbeat_reaches_the_broker_under_the_bounded_policy() -> None:
    # The policy goes from HeartbeatSends through Celery's dispatcher to kombu's publish
    app = Celery(broker="memory://", set_as_current=False)
    with app.connection_for_write() as conn:
        dispatcher = EventDispatcher(conn, hostname="w@test", app=app)
        published: list[dict[str, Any]] = []
        dispatcher.producer.publish = lambda body, **options: published.append(options)
        HeartbeatSends(dispatcher).send("worker-heartbeat", retry=True, freq=2.0)
    ((options,),) = [published]
    assert options["routing_key"] == "worker.heartbeat"
    assert (options["retry"], options["retry_policy"]) == (True, HEARTBEAT_RETRY_POLICY)


@pytest.mark.parametrize(
    ("hook", "expected"),
    [
        ("on_decode_error", ["self", "message", "exc"]),
        ("on_unknown_message", ["self", "body", "message"]),
        ("on_unknown_task", ["self", "body", "message", "exc"]),
        ("on_invalid_task", ["self", "body", "message", "exc"]),
        ("on_send_event_buffered", ["self"]),
        ("_flush_events", ["self"]),
        ("shutdown", ["self"]),
    ],
)
def test_the_consumer_hooks_the_fleet_overrides(hook: str, expected: list[str]) -> None:
    assert parameters(getattr(Consumer, hook)) == expected, f"Celery's Consumer.{hook} changed"
    assert parameters(getattr(FleetConsumer, hook)) == expected


def test_the_names_the_fleet_adds_to_celerys_consumer_are_not_celerys() -> None:
    ours = {name for cls in (RecordingConsumer, FleetConsumer) for name in vars(cls)} - set(dir(Consumer))
    assert {"_record", "_events_flush_due", "_flush_events_soon", "_flush_events_now"} <= ours
    # The dispatcher is kept under a name of ours: neither Celery's class nor a consumer it builds uses it
    assert not hasattr(Consumer, "_event_dispatcher")
    assert "event_dispatcher" not in {name for cls in Consumer.__mro__ for name in vars(cls)}


class Hub:
    def __init__(self) -> None:
        self.soon: list[Any] = []
        self.later: list[tuple[float, Any]] = []

    def call_soon(self, callback: Any) -> None:
        self.soon.append(callback)

    def call_later(self, delay: float, callback: Any) -> None:
        self.later.append((delay, callback))


class Dispatcher:
    """What Celery's Events step builds, as the consumer sees it."""

    def __init__(self, connection: Any, **options: Any) -> None:
        self.options = options
        self.buffer_limit = 24  # Celery's default
        self.connection = connection
        self.groups = options.get("groups")
        self.flushed = 0

    def flush(self) -> None:
        self.flushed += 1


def test_celerys_events_step_sets_the_consumers_dispatcher_by_assignment() -> None:
    # Given the fleet's consumer with an event loop, and Celery's Events step
    hub = Hub()
    consumer = fleet_consumer(Celery(broker="memory://", set_as_current=False), hub=hub)
    consumer.app = SimpleNamespace(events=SimpleNamespace(Dispatcher=Dispatcher))
    consumer.connection_for_write = lambda heartbeat=None: SimpleNamespace(supports_heartbeats=False)
    step = Events(consumer)
    # When the step starts (a worker's connection is up)
    step.start(consumer)
    # Then the dispatcher it built went through the fleet's setter: only the loop flushes
    dispatcher = consumer.event_dispatcher
    assert isinstance(dispatcher, Dispatcher) and consumer.__dict__["_event_dispatcher"] is dispatcher
    assert dispatcher.buffer_limit == sys.maxsize
    assert dispatcher.options["buffer_group"] == ["task"]
    assert dispatcher.options["on_send_buffered"] == consumer.on_send_event_buffered


def test_celerys_buffered_events_go_through_the_hooks_the_fleet_overrides() -> None:
    # Celery's dispatcher calls on_send_buffered for each buffered task event and publishes nothing
    # until a flush when its limit is the fleet's
    app = Celery(broker="memory://", set_as_current=False)
    hub = Hub()
    consumer = fleet_consumer(app, hub=hub)
    with app.connection_for_write() as conn:
        dispatcher = EventDispatcher(
            conn, hostname="w@test", app=app, buffer_group=["task"], on_send_buffered=consumer.on_send_event_buffered
        )
        published: list[str] = []
        dispatcher.producer.publish = lambda body, **options: published.append(options["routing_key"])
        consumer.event_dispatcher = dispatcher
        for n in range(30):
            dispatcher.send("task-received", uuid=str(n))
        assert published == [] and len(hub.soon) == 30
        # The loop's turn schedules one flush EVENTS_FLUSH_S later, and Celery's _flush_events sends them
        for callback in hub.soon:
            callback()
        ((_, flush),) = hub.later
        flush()
    assert published == ["task.multi"]


# -- what a task's events and inspection show (tasks/redaction.py) -----------------------------------


def celery_request(request_class: type[Request], kwargs: dict[str, Any]) -> Request:
    client = Celery(broker="memory://", set_as_current=False)
    message = client.amqp.as_task_v2(str(uuid.uuid4()), "offers.submit", args=(), kwargs=kwargs)
    transport = SimpleNamespace(headers=message.headers, delivery_info={}, properties={})
    return request_class(
        transport,
        app=client,
        task=SimpleNamespace(ignore_result=True, send_events=True),
        hostname="core@test",
        eventer=SimpleNamespace(enabled=True, send=lambda *a, **k: None),
        headers=message.headers,
        body=message.body,
        decoded=True,
    )


def test_the_request_attributes_redaction_writes_are_the_ones_celery_reads() -> None:
    for name in ("_request_dict", "_args", "_kwargs", "_argsrepr", "_kwargsrepr"):
        assert name in Request.__slots__, f"Celery's Request no longer keeps {name}"
    request = celery_request(Request, {"offer_id": "off_1", "note": "x"})
    # The arguments redaction reads are the task's own
    assert (request._args, request._kwargs) == (request.args, request.kwargs)
    assert request._kwargs == {"offer_id": "off_1", "note": "x"}
    # What it writes is what the properties, the inspection answers and the task's context read
    request._argsrepr, request._kwargsrepr = "(A)", "{K}"
    assert (request.argsrepr, request.kwargsrepr) == ("(A)", "{K}")
    info = request.info(safe=True)
    assert (info["args"], info["kwargs"]) == ("(A)", "{K}")
    request._request_dict["kwargsrepr"] = "{K}"
    assert request.request_dict is request._request_dict and request.request_dict["kwargsrepr"] == "{K}"


def test_the_request_methods_redaction_overrides_keep_their_signatures() -> None:
    assert parameters(Request.info) == parameters(RedactedRequest.info) == ["self", "safe"]
    assert inspect.signature(Request.info).parameters["safe"].default is False
    assert parameters(Request.send_event) == ["self", "type", "fields"]
    assert parameters(RedactedRequest.send_event) == ["self", "type", "fields"]
    redacted = celery_request(RedactedRequest, {"offer": {"offer_id": "off_1", "buyer_context": {"email": "b@x"}}})
    assert redacted.request_dict["kwargsrepr"] == "{'offer_id': 'off_1'}"


def test_the_conf_command_redaction_replaces_is_celerys_under_both_names() -> None:
    # Celery's own command, which the fleet's replaces, is still there with the same arguments
    assert parameters(control.conf) == parameters(conf) == ["state", "with_defaults", "kwargs"]
    assert control.Panel.data["conf"] is conf and control.Panel.data["dump_conf"] is conf


# -- what tasks/app.py hands Celery (the buffered task-sent events, tasks/task_events.py) -------------


def test_send_task_hands_its_task_sent_event_to_the_dispatcher_it_is_given() -> None:
    # OffersCelery.send_task passes event_dispatcher: Celery's send_task_message publishes through it
    app = Celery(broker="memory://", set_as_current=False)
    app.conf.task_send_sent_event = True
    sent: list[tuple[str, dict[str, Any]]] = []

    class Events:
        def publish(self, type: str, fields: dict[str, Any], producer: Any, **_: Any) -> None:
            sent.append((type, fields))

    app.send_task("offers.submit", kwargs={"offer_id": "off_1"}, event_dispatcher=Events())
    ((kind, fields),) = sent
    assert kind == "task-sent" and fields["name"] == "offers.submit"
    # BufferedEvents stands in for Celery's EventDispatcher.publish, as send_task_message calls it
    assert parameters(EventDispatcher.publish)[:4] == parameters(BufferedEvents.publish)[:4]
    assert parameters(EventDispatcher.publish)[:4] == ["self", "type", "fields", "producer"]


# -- the loggers offers_workers/logs.py quiets (they log every task's arguments) ---------------------


@pytest.mark.parametrize("module", ["celery.app.trace", "celery.worker.strategy"])
def test_the_loggers_quieted_for_the_buyers_sake_are_still_celerys(module: str) -> None:
    assert symbol_by_name(f"{module}:logger").name == module


# -- the single beat (tasks/beat.py), on RedBeat's scheduler ---------------------------------------


def test_the_beat_calls_redbeats_lock_helper_as_celerys_signal_does_and_adds_no_name_of_redbeats() -> None:
    from redbeat import RedBeatScheduler
    from redbeat.schedulers import acquire_distributed_beat_lock

    from tasks.beat import OffersBeatScheduler

    # OffersBeatScheduler hands it a stand-in for the beat service: the helper reads its scheduler only
    assert parameters(acquire_distributed_beat_lock) == ["sender", "kwargs"]
    assert acquire_distributed_beat_lock(SimpleNamespace(scheduler=SimpleNamespace(lock_key=None))) is None
    ours = set(vars(OffersBeatScheduler)) - set(dir(RedBeatScheduler))
    assert {"_tick", "_schedule_laid"} <= ours
