"""The Redis transport the fleet runs on: an envelope kombu cannot read becomes a record.

kombu parses a popped Redis envelope before any code of ours runs, and a bad one raised out of the
consumer loop: the worker stopped ("Unrecoverable error") and the message, already popped, was gone
without a trace. Here it is replaced, before kombu reads it, by an ``offers.record_unreadable``
message carrying its raw text (``tasks/unreadable.py``). Nothing here deserialises anything but JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str

from offers_workers.domain.authority import HEADER
from tasks import authority
from tasks.unreadable import RECORD_TASK, record_kwargs

log = logging.getLogger("offers_workers.wire")


def envelope_problem(item: bytes | str) -> str | None:
    """What makes a Redis envelope unreadable to kombu, or None."""
    try:
        envelope = json.loads(item)
    except (ValueError, RecursionError):
        return "the envelope is not JSON"
    if not isinstance(envelope, dict):
        return "the envelope is not a JSON object"
    properties = envelope.get("properties")
    if not isinstance(properties, dict):
        return "the envelope has no properties object"
    if not isinstance(properties.get("delivery_tag"), (str, int)):
        return "properties.delivery_tag is missing"
    info = properties.get("delivery_info")
    if (
        not isinstance(info, dict)
        or not isinstance(info.get("exchange"), str)
        or not isinstance(info.get("routing_key"), str)
    ):
        return "properties.delivery_info needs exchange and routing_key strings"
    body = envelope.get("body")
    if body is not None and not isinstance(body, str):
        return "body must be a string"
    encoding = properties.get("body_encoding")
    if encoding not in (None, "base64"):
        return "properties.body_encoding must be base64 or absent"
    if encoding == "base64" and body:
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "body is not valid base64"
    if not isinstance(envelope.get("headers") or {}, dict):
        return "headers must be an object"
    for key in ("content-type", "content-encoding"):
        if not isinstance(envelope.get(key) or "", str):
            return f"{key} must be a string"
    return None


def record_envelope(queue: str, problem: str, raw: str, raw_size: int) -> bytes:
    """A well-formed envelope for ``offers.record_unreadable`` carrying the unreadable one."""
    message_id = str(uuid.uuid4())
    kwargs = record_kwargs(queue, "invalid_envelope", problem, raw, raw_size)
    headers = {"task": RECORD_TASK, "id": message_id}
    if (signature := authority.sign(RECORD_TASK, message_id, [], kwargs)) is not None:
        headers[HEADER] = signature  # the record task runs only for the fleet (tasks/authority.py)
    return json.dumps(
        {
            "body": json.dumps([[], kwargs, {}]),
            "content-type": "application/json",
            "content-encoding": "utf-8",
            "headers": headers,
            "properties": {"delivery_tag": message_id, "delivery_info": {"exchange": "", "routing_key": queue}},
        }
    ).encode()


class GuardedChannel(kombu_redis.Channel):
    """kombu's Redis channel, but a popped envelope it could not read becomes a record instead."""

    # kombu's private client factory and redis-py's parse_response, wrapped: fenced by
    # tests/unit/test_celery_fences.py::test_kombu_reads_a_popped_envelope_through_the_guarded_client.
    def _create_client(self, asynchronous: bool = False) -> Any:
        client = super()._create_client(asynchronous)
        if asynchronous:  # the client that BRPOPs
            read = client.parse_response
            sep = self.sep

            def parse_response(connection: Any, command_name: str, **options: Any) -> Any:
                response = read(connection, command_name, **options)
                if command_name == "BRPOP" and response:
                    key, item = response
                    problem = envelope_problem(item)
                    if problem is not None:
                        queue = bytes_to_str(key).rsplit(sep, 1)[0]  # the list's name less its priority suffix
                        raw = item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
                        log.error(
                            "unreadable envelope handed on for the record", extra={"queue": queue, "reason": problem}
                        )
                        return key, record_envelope(queue, problem, raw, len(item))
                return response

            client.parse_response = parse_response
        return client


class RedisTransport(kombu_redis.Transport):
    """The Redis transport the fleet runs on (``broker_transport``); the URL stays ``redis://``."""

    Channel = GuardedChannel


class GuardedSentinelChannel(GuardedChannel, kombu_redis.SentinelChannel):
    """The same guard on a channel that asks the sentinels for the master (on every reconnect)."""


class SentinelTransport(kombu_redis.SentinelTransport):
    """The fleet's transport for a ``sentinel://`` broker URL (Redis with Sentinel)."""

    Channel = GuardedSentinelChannel
