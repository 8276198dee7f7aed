"""EventPublisher against moto in server mode, read back through SQS."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest

from config.settings import Settings
from offers_workers.domain.errors import PermanentError
from offers_workers.local.sandbox import clear_faults, ensure_aws_resources, get_faults, set_fault
from offers_workers.partners.aws_events import SOURCE, EventPublisher
from offers_workers.partners.interfaces import Published


def client(settings: Settings, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=settings.aws_endpoint_url,
        region_name=settings.aws_region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def queue(settings: Settings) -> tuple[str, str]:
    sqs = client(settings, "sqs")
    url = sqs.create_queue(QueueName=f"q-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def listening_queues(settings: Settings) -> tuple[str, str]:
    """SQS queues that get the bus's OfferSubmitted events (a rule) and the submitted topic's notes."""
    rule_queue, rule_queue_arn = queue(settings)
    events = client(settings, "events")
    rule = f"r-{uuid.uuid4().hex[:8]}"
    events.put_rule(
        Name=rule,
        EventBusName=settings.event_bus_name,
        EventPattern=json.dumps({"source": [SOURCE], "detail-type": ["OfferSubmitted"]}),
    )
    events.put_targets(Rule=rule, EventBusName=settings.event_bus_name, Targets=[{"Id": "q", "Arn": rule_queue_arn}])
    topic_queue, topic_queue_arn = queue(settings)
    client(settings, "sns").subscribe(
        TopicArn=settings.sns_submitted_topic_arn, Protocol="sqs", Endpoint=topic_queue_arn
    )
    return rule_queue, topic_queue


def receive(settings: Settings, url: str) -> list[dict[str, Any]]:
    messages = client(settings, "sqs").receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    return [json.loads(m["Body"]) for m in messages.get("Messages", [])]


def test_resources_exist_and_ensure_is_idempotent(settings: Settings) -> None:
    ensure_aws_resources(settings)
    assert (
        client(settings, "events").describe_event_bus(Name=settings.event_bus_name)["Name"] == settings.event_bus_name
    )
    arns = {t["TopicArn"] for t in client(settings, "sns").list_topics()["Topics"]}
    assert {settings.sns_submitted_topic_arn, settings.sns_cancelled_topic_arn} <= arns
    client(settings, "s3").head_bucket(Bucket=settings.audit_bucket)


def test_event_reaches_eventbridge_and_sns(settings: Settings) -> None:
    rule_queue, topic_queue = listening_queues(settings)

    event_id = str(uuid.uuid4())
    EventPublisher(settings).publish(
        event_id=event_id,
        detail_type="OfferSubmitted",
        detail={"offer_id": "off_1", "amount_cents": 12_500},
        sns_topic_arn=settings.sns_submitted_topic_arn,
    )

    [event] = receive(settings, rule_queue)
    assert (event["source"], event["detail-type"]) == (SOURCE, "OfferSubmitted")
    assert event["detail"] == {"offer_id": "off_1", "amount_cents": 12_500, "event_id": event_id}
    [note] = receive(settings, topic_queue)
    assert note["Subject"] == "OfferSubmitted"
    assert json.loads(note["Message"])["event_id"] == event_id
    assert note["MessageAttributes"]["event_id"]["Value"] == event_id
    assert note["MessageAttributes"]["event_type"]["Value"] == "OfferSubmitted"


def test_a_put_the_bus_refuses_notifies_no_subscriber(settings: Settings) -> None:
    _, topic_queue = listening_queues(settings)
    no_bus = settings.model_copy(update={"event_bus_name": f"no-such-bus-{uuid.uuid4().hex[:8]}"})
    with pytest.raises(PermanentError) as refused:
        EventPublisher(no_bus).publish(
            event_id=str(uuid.uuid4()),
            detail_type="OfferSubmitted",
            detail={},
            sns_topic_arn=settings.sns_submitted_topic_arn,
        )
    assert refused.value.partner == "aws"
    # The topic is notified only after the bus took the event: its subscribers heard nothing.
    assert receive(settings, topic_queue) == []


def test_publish_without_topic_only_hits_the_bus(settings: Settings) -> None:
    EventPublisher(settings).publish(event_id="e-1", detail_type="OfferCancelled", detail={}, sns_topic_arn=None)


def test_a_real_endpoint_signs_with_the_deployments_credentials(settings: Settings, monkeypatch) -> None:
    from offers_workers.partners.aws_archive import AuditArchive

    # Given a production deployment behind a VPC endpoint, its credentials from boto3's usual chain
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMTHECHAIN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-the-chain")
    deployed = settings.model_copy(
        update={"sandbox": False, "aws_endpoint_url": "https://vpce-0abc.events.us-east-1.vpce.amazonaws.com"}
    )
    # Then every AWS client signs with them, not with the sandbox's test keys
    clients = [EventPublisher(deployed)._events, EventPublisher(deployed)._sns, AuditArchive(deployed)._s3]
    assert {c._request_signer._credentials.access_key for c in clients} == {"AKIAFROMTHECHAIN"}
    assert {c.meta.endpoint_url for c in clients} == {deployed.aws_endpoint_url}
    # And in the sandbox they sign with moto's test keys
    assert EventPublisher(settings)._events._request_signer._credentials.access_key == "testing"


def publish_together(publisher: EventPublisher, topics: list[str | None]) -> list[Any]:
    """One publish per topic, all started at once from threads of their own: each answer, or its error."""
    start = threading.Barrier(len(topics))

    def one(n: int, topic: str | None) -> Any:
        start.wait()
        try:
            return publisher.publish(
                event_id=f"evt-{n}", detail_type="OfferSubmitted", detail={"offer_id": f"off_{n}"}, sns_topic_arn=topic
            )
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(topics)) as pool:
        return list(pool.map(one, range(len(topics)), topics))


def test_events_published_together_go_out_in_batches_each_with_its_own_answer(settings: Settings, sandbox) -> None:
    rule_queue, topic_queue = listening_queues(settings)
    missing_topic = settings.sns_submitted_topic_arn.rsplit(":", 1)[0] + ":no-such-topic"
    # Given 25 stages publishing at once, AWS answering in 40 ms: 20 to the topic, 3 to one that
    # does not exist, 2 to none
    topics: list[str | None] = [settings.sns_submitted_topic_arn] * 20 + [missing_topic] * 3 + [None] * 2
    publisher = EventPublisher(settings)
    set_fault(sandbox, "aws", status=None, latency_ms=40)  # restarts the sandbox's request count
    try:
        answers = publish_together(publisher, topics)
        requests = get_faults(sandbox, "aws")["aws"]["requests"]
    finally:
        clear_faults(sandbox, "aws")

    # Then they took at most half the calls one event per call takes (25 PutEvents, 23 Publish)
    assert requests <= 24, requests
    # and each got its own answer: the topic's 20 their own MessageIds, the missing topic's 3 a
    # permanent error naming it (their events are on the bus; a retry puts them again, same event id),
    # the 2 without a topic none
    delivered = answers[:20]
    assert all(isinstance(a, Published) and a.sns_message_id for a in delivered), delivered
    assert len({a.sns_message_id for a in delivered}) == 20
    assert [a.event_id for a in delivered] == [f"evt-{n}" for n in range(20)]
    failed = answers[20:23]
    assert all(isinstance(e, PermanentError) and e.sns_topic == "no-such-topic" for e in failed), failed
    assert all(isinstance(a, Published) and a.sns_message_id is None and a.bus_event_id for a in answers[23:])
    # And the bus holds all 25 events, the topic the 20 notes, each once
    on_the_bus = [e["detail"]["event_id"] for e in receive_all(settings, rule_queue, 25)]
    assert sorted(on_the_bus) == sorted(f"evt-{n}" for n in range(25))
    notes = [json.loads(m["Message"])["event_id"] for m in receive_all(settings, topic_queue, 20)]
    assert sorted(notes) == sorted(f"evt-{n}" for n in range(20))


def receive_all(settings: Settings, url: str, expected: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    for _ in range(20):
        if len(got) >= expected:
            break
        got += receive(settings, url)
    got += receive(settings, url)  # one more look: nothing beyond the expected may arrive
    return got
