"""What task events and worker inspection show (Flower reads them): a task's ids, never the offer;
a worker's configuration, with no password."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.worker.control import Panel

from tasks.redaction import WITHHELD, RedactedRequest, conf, event_reprs, shown_kwargs

EMAIL, IP = "buyer-7@example.com", "198.51.100.23"
OFFER = {
    "offer_id": "off_42",
    "listing_id": "lst_1",
    "maker_id": "mkr_1",
    "buyer_id": "usr_42",
    "amount_cents": 15000,
    "currency": "USD",
    "payment": {"method": "card", "payment_method_id": "pm_card_visa"},
    "buyer_context": {"email": EMAIL, "ip": IP, "session_id": "s1"},
}


def test_a_submit_is_shown_by_its_offer_id_alone() -> None:
    assert event_reprs((), {"offer": OFFER}) == ("()", "{'offer_id': 'off_42'}")


def test_a_draft_is_shown_by_its_offer_id_alone() -> None:
    assert shown_kwargs({"draft": OFFER}) == {"offer_id": "off_42"}


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"offer_id": "off_42"}, {"offer_id": "off_42"}),
        ({"offer_id": "off_42", "reason": "buyer_withdrew", "actor": "buyer"}, {"offer_id": "off_42"}),
        ({"event_id": "5d3b8a52-6f0e-4c38-9a51-2f1f6f0c7e11"}, {"event_id": "5d3b8a52-6f0e-4c38-9a51-2f1f6f0c7e11"}),
        ({"stuck_after_s": 300.0}, {}),
        ({"queue": "offers.intake", "problem": "undecodable", "raw": f'{{"email": "{EMAIL}"}}'}, {}),
    ],
)
def test_ids_are_shown_and_every_other_argument_is_left_out(kwargs: dict[str, Any], shown: dict[str, str]) -> None:
    assert shown_kwargs(kwargs) == shown


@pytest.mark.parametrize(
    "kwargs",
    [
        {"offer_id": EMAIL},
        {"offer": {**OFFER, "offer_id": EMAIL}},
        {"offer": {**OFFER, "offer_id": ["off_42"]}},
        {"offer_id": "x" * 65},
    ],
)
def test_an_id_that_is_not_an_id_is_left_out(kwargs: dict[str, Any]) -> None:
    assert shown_kwargs(kwargs) == {}


@pytest.mark.parametrize("kwargs", [None, "offer", ["off_42"], {"offer": "not a dict"}, {1: 2}])
def test_arguments_of_any_shape_give_a_repr(kwargs: Any) -> None:
    assert event_reprs(None, kwargs) == ("()", "{}")


def test_positional_arguments_are_counted_never_shown() -> None:
    argsrepr, kwargsrepr = event_reprs([OFFER, EMAIL], {})
    assert (argsrepr, kwargsrepr) == ("(<2 withheld>)", "{}")


class Eventer:
    enabled = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, type: str, **fields: Any) -> None:
        self.sent.append((type, fields))


def upstream_request(kwargs: dict[str, Any]) -> tuple[RedactedRequest, Eventer, dict[str, Any]]:
    """A worker's request for a message built as a plain Celery client builds it (headers with its reprs)."""
    client = Celery(broker="memory://", set_as_current=False)
    message = client.amqp.as_task_v2(str(uuid.uuid4()), "offers.submit", args=(), kwargs=kwargs)
    headers = message.headers
    transport = SimpleNamespace(headers=headers, delivery_info={}, properties={})
    eventer = Eventer()
    task = SimpleNamespace(ignore_result=True, send_events=True)
    request = RedactedRequest(
        transport,
        app=client,
        task=task,
        hostname="core@test",
        eventer=eventer,
        headers=headers,
        body=message.body,
        decoded=True,
    )
    return request, eventer, headers


def test_a_worker_shows_an_upstream_submit_by_its_offer_id() -> None:
    # Given a submit as an upstream Celery client sends it: the whole offer in its kwargsrepr header
    request, _, headers = upstream_request({"offer": OFFER})
    assert EMAIL in headers["kwargsrepr"] and IP in headers["kwargsrepr"]
    # Then the worker's request, what its task-received event and inspection answers read, has the id only
    assert (request.argsrepr, request.kwargsrepr) == ("()", "{'offer_id': 'off_42'}")
    assert request.request_dict["kwargsrepr"] == "{'offer_id': 'off_42'}"
    # And the task still runs with the whole offer
    assert request.kwargs == {"offer": OFFER}


def test_inspection_answers_show_the_reprs_even_when_asked_for_the_arguments() -> None:
    request, _, _ = upstream_request({"offer": OFFER})
    info = request.info(safe=False)
    assert (info["args"], info["kwargs"]) == ("()", "{'offer_id': 'off_42'}")
    assert EMAIL not in repr(info) and IP not in repr(info) and EMAIL not in repr(request)


def test_a_succeeded_event_withholds_a_result() -> None:
    request, eventer, _ = upstream_request({"draft": OFFER})
    request.send_event("task-succeeded", result=f"{{'valid': False, 'errors': [{{'message': '{IP}'}}]}}", runtime=0.1)
    request.send_event("task-succeeded", result="None", runtime=0.1)
    assert [fields["result"] for _, fields in eventer.sent] == [WITHHELD, "None"]


def test_a_workers_configuration_shows_no_password() -> None:
    # Given a worker whose beat and results use a Redis with a password
    app = Celery(broker="redis://:brokerpw@redis.internal:6379/0", set_as_current=False)
    app.conf.update(redbeat_redis_url="redis://:beatpw@redis.internal:6379/0", result_backend="redis://:resultpw@r/0")
    # When Flower (or `celery inspect conf`) asks for its configuration
    assert Panel.data["conf"] is conf
    shown = conf(SimpleNamespace(app=app))
    # Then every URL is there, without its password
    assert shown["redbeat_redis_url"] == "redis://:**@redis.internal:6379/0"
    assert [pw for pw in ("brokerpw", "beatpw", "resultpw") if pw in repr(shown)] == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://offers:pg-s3cret@db.internal:5432/offers", "postgresql://offers:***@db.internal:5432/offers"),
        ("redis://:redis-s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("amqps://fleet:mq%40s3cret@mq:5671/offers", "amqps://fleet:***@mq:5671/offers"),
        (
            "postgresql://offers@db/offers?password=s3cret&sslmode=verify-full",
            "postgresql://offers@db/offers?password=***&sslmode=verify-full",
        ),
        ("host=db user=offers password='s3 cret' dbname=offers", "host=db user=offers password=*** dbname=offers"),
        ("user=postgres dbname=offers host=127.0.0.1", "user=postgres dbname=offers host=127.0.0.1"),
        ("postgresql://postgres:@/postgres?host=/tmp/pg", "postgresql://postgres:***@/postgres?host=/tmp/pg"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    from offers_workers.logs import masked_url

    assert masked_url(url) == shown
    assert "s3cret" not in masked_url(url) and "s3 cret" not in masked_url(url)
