"""What consumers of our events receive: an SQS queue behind an EventBridge rule and one behind
each SNS topic, read back through the real boto3 SDK."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import boto3

from tests.conftest import new_id


class BusReader:
    """An SQS queue behind an EventBridge rule and each SNS topic: what consumers would receive."""

    def __init__(self, settings, *, raw_sns: bool = True) -> None:
        """``raw_sns=False``: the SNS queues receive SNS's envelope (with its MessageId), not the bare message."""
        kwargs = {
            "endpoint_url": settings.aws_endpoint_url,
            "region_name": settings.aws_region,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        self.sqs = boto3.client("sqs", **kwargs)
        events = boto3.client("events", **kwargs)
        sns = boto3.client("sns", **kwargs)
        name = new_id("bus")
        self.queues = {}
        for kind in ("bus", "sns_submitted", "sns_cancelled"):
            url = self.sqs.create_queue(QueueName=f"{name}-{kind}")["QueueUrl"]
            arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            self.queues[kind] = (url, arn)
        events.put_rule(
            Name=name, EventBusName=settings.event_bus_name, EventPattern=json.dumps({"source": ["offers.submission"]})
        )
        events.put_targets(
            Rule=name, EventBusName=settings.event_bus_name, Targets=[{"Id": "q", "Arn": self.queues["bus"][1]}]
        )
        for kind, topic in (
            ("sns_submitted", settings.sns_submitted_topic_arn),
            ("sns_cancelled", settings.sns_cancelled_topic_arn),
        ):
            sns.subscribe(
                TopicArn=topic,
                Protocol="sqs",
                Endpoint=self.queues[kind][1],
                Attributes={"RawMessageDelivery": str(raw_sns).lower()},
            )
        self.received: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def drain(self) -> dict[str, list[dict[str, Any]]]:
        for kind, (url, _) in self.queues.items():
            while True:
                messages = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
                if not messages:
                    break
                for m in messages:
                    self.received[kind].append(json.loads(m["Body"]))
                    self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return self.received
