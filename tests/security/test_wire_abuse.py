"""Abuse on the wire: raw messages on our queues, each followed by a good offer that must still go
through. Nothing is deserialised that is not JSON, nothing takes a worker down, and every message
is recorded as an intake rejection, those the workers refuse unread with a clear log line too.
"""

from __future__ import annotations

import json
import pickle
import uuid
from pathlib import Path
from typing import Any

import pytest

from offers_workers.domain import states
from offers_workers.local.samples import base_offer
from tests.conftest import RUN_ID, new_id, wait_until

pytestmark = pytest.mark.usefixtures("fleet")

MARKER = Path(f"/tmp/offers-wire-abuse-{RUN_ID}")


class Exploit:
    """Unpickling this would create MARKER: proof of deserialisation if the file ever appears."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Path.touch, (str(MARKER),))


def the_next_offer_goes_through(celery_app: Any, runtime: Any, fleet: Any, *, after: str) -> None:
    """A good offer sent after the abuse is submitted, and no worker died of it."""
    good = base_offer(new_id(f"after{after}"), 1)
    celery_app.send_task("offers.submit", kwargs={"offer": good})
    wait_until(
        lambda: state_of(runtime, good["offer_id"]) == states.SUBMITTED,
        timeout=60,
        message=f"the good offer after the {after}",
    )
    assert not fleet.dead(), "a worker died"


def publish(
    celery_app, body: bytes, *, content_type: str = "application/json", task: str = "offers.submit", **headers: Any
) -> None:
    task_id = str(uuid.uuid4())
    message_headers = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        **headers,
    }
    with celery_app.connection_for_write() as conn:
        conn.Producer().publish(
            body,
            exchange="",
            routing_key="offers.intake",
            content_type=content_type,
            content_encoding="utf-8",
            headers=message_headers,
        )


def submit_body(**kwargs: Any) -> bytes:
    return json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()


def state_of(runtime, offer_id: str) -> str | None:
    with runtime.db.transaction() as conn:
        row = conn.execute("SELECT state FROM offers WHERE offer_id = %s", (offer_id,)).fetchone()
    return row["state"] if row else None


def rejection(runtime, offer_id: str) -> dict[str, Any] | None:
    with runtime.db.transaction() as conn:
        return conn.execute("SELECT reason, errors FROM intake_rejections WHERE offer_id = %s", (offer_id,)).fetchone()


def worker_log(fleet) -> str:
    return "\n".join(p.read_text(errors="replace") for p in fleet.log_dir.glob("worker*.log"))


def last_rejection_id(runtime) -> int:
    with runtime.db.transaction() as conn:
        return conn.execute("SELECT coalesce(max(id), 0) AS n FROM intake_rejections").fetchone()["n"]


def recorded_since(runtime, after_id: int, code: str) -> dict[str, Any] | None:
    """The intake rejection recorded for a message the workers could not read."""
    with runtime.db.transaction() as conn:
        return conn.execute(
            "SELECT reason, errors, raw_body, raw_size FROM intake_rejections WHERE id > %s AND errors -> 0 ->> 'code' = %s",
            (after_id, code),
        ).fetchone()


ABUSES: dict[str, tuple[dict[str, Any], str, str]] = {
    # name: (publish arguments, what the worker's log line says, the error code of the record)
    "pickle": (
        {"body": pickle.dumps(Exploit()), "content_type": "application/x-python-serialize"},
        "untrusted content",
        "refused_content",
    ),
    "yaml": (
        {"body": b"!!python/object/apply:os.system ['touch /tmp/x']", "content_type": "application/x-yaml"},
        "untrusted content",
        "refused_content",
    ),
    "not json": ({"body": b"{this is not json"}, "decode", "undecodable"),
    "nested 10,000 deep": (
        {"body": b'[[], {"offer": ' + b"[" * 10_000 + b"]" * 10_000 + b"}, {}]"},
        "decode",
        "undecodable",
    ),
    "unknown task": (
        {"body": submit_body(offer={}), "task": "offers.drop_tables"},
        "unregistered task",
        "unknown_task",
    ),
}


@pytest.mark.parametrize("abuse", list(ABUSES))
def test_a_hostile_message_is_refused_recorded_and_the_next_offer_goes_through(
    celery_app, runtime, fleet, abuse: str
) -> None:
    arguments, logged, code = ABUSES[abuse]
    before, after_id = worker_log(fleet).count(logged), last_rejection_id(runtime)
    publish(celery_app, **arguments)
    the_next_offer_goes_through(celery_app, runtime, fleet, after="abuse")
    wait_until(lambda: worker_log(fleet).count(logged) > before, timeout=10, message=f"a log line saying {logged!r}")
    assert not MARKER.exists(), "a non-JSON body was deserialised"
    # Then the refused message is on record, with its raw text and what was wrong with it
    found = wait_until(
        lambda: recorded_since(runtime, after_id, code), timeout=20, message=f"an intake rejection {code}"
    )
    assert found["reason"] == "invalid_payload" and found["raw_size"] == len(arguments["body"])


ENVELOPES = {
    # name: (what a producer pushed onto the Redis list, the record's message)
    "not json": (b"hello", "not JSON"),
    "a JSON list": (b"[1, 2]", "not a JSON object"),
    "no delivery_info": (
        json.dumps({"body": "[[], {}, {}]", "properties": {"delivery_tag": "x"}}).encode(),
        "delivery_info",
    ),
    "bad base64": (
        json.dumps(
            {
                "body": "%%%",
                "headers": {"task": "offers.submit", "id": "x"},
                "properties": {
                    "delivery_tag": "x",
                    "body_encoding": "base64",
                    "delivery_info": {"exchange": "", "routing_key": "offers.intake"},
                },
            }
        ).encode(),
        "base64",
    ),
}


@pytest.mark.parametrize("envelope", list(ENVELOPES))
def test_an_unreadable_redis_envelope_is_recorded_and_no_worker_stops(
    celery_app, runtime, fleet, envelope: str
) -> None:
    # Given a producer of another language pushing a broken envelope straight onto the list
    raw, said = ENVELOPES[envelope]
    after_id = last_rejection_id(runtime)
    with celery_app.connection_for_write() as conn:
        conn.default_channel.client.lpush("offers.intake", raw)
    # Then no worker stops (kombu alone would: "Unrecoverable error"), the next offer goes through,
    # and the envelope is on record with its raw text
    the_next_offer_goes_through(celery_app, runtime, fleet, after="envelope")
    found = wait_until(
        lambda: recorded_since(runtime, after_id, "invalid_envelope"), timeout=20, message="the envelope's record"
    )
    assert said in found["errors"][0]["message"] and found["raw_body"] == raw.decode()


@pytest.mark.parametrize("abuse", ["10 MB body", "missing kwargs", "extra kwargs", "forged retry headers"])
def test_a_bad_submit_is_recorded_and_the_next_offer_goes_through(celery_app, runtime, fleet, abuse: str) -> None:
    offer_id = new_id("abuse")
    if abuse == "10 MB body":
        publish(celery_app, submit_body(offer=base_offer(offer_id, 1) | {"message": "x" * 10_000_000}))
    elif abuse == "missing kwargs":
        publish(celery_app, submit_body())
    elif abuse == "extra kwargs":
        publish(celery_app, submit_body(offer=base_offer(offer_id, 1), priority="urgent", sql="DROP TABLE offers"))
    else:
        # Headers claiming the message was retried 99 times and already dead-lettered: it is just a message
        publish(
            celery_app,
            submit_body(offer=base_offer(offer_id, 1)),
            retries=99,
            **{"x-death": [{"count": 5}], "dead_lettered": True},
        )
    the_next_offer_goes_through(celery_app, runtime, fleet, after="abuse")
    if abuse == "10 MB body":
        found = wait_until(lambda: rejection(runtime, offer_id), message="the rejection")
        assert found["reason"] == "invalid_payload" and found["errors"][0]["code"] == "too_large"
    elif abuse == "extra kwargs":
        found = wait_until(lambda: rejection(runtime, offer_id), message="the rejection")
        assert {e["field"] for e in found["errors"]} == {"priority", "sql"}
    elif abuse == "forged retry headers":
        wait_until(lambda: state_of(runtime, offer_id) == states.SUBMITTED, message="the offer itself")
    with runtime.db.transaction() as conn:
        assert (
            conn.execute("SELECT count(*) AS n FROM dead_letters WHERE offer_id = %s", (offer_id,)).fetchone()["n"] == 0
        )


def test_a_caller_waiting_on_a_misnamed_task_hears_at_once(offers_env, fleet) -> None:
    # A validate_draft caller (a plain Celery client) with a typo in the task name gets
    # NotRegistered at once, not a timeout
    from celery import Celery
    from celery.exceptions import NotRegistered

    client = Celery(
        broker=offers_env["OFFERS_BROKER_URL"], backend=offers_env["OFFERS_BROKER_URL"], set_as_current=False
    )
    try:
        answer = client.send_task("offers.validate_drafts", kwargs={"draft": {}}, queue="offers.realtime")
        with pytest.raises(NotRegistered):
            answer.get(timeout=20)
    finally:
        client.close()
