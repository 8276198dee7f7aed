"""The attacker who holds a broker credential but no key of the fleet's.

On each broker, a fleet of its own (the Procfile's workers and beat, keys set as a deployment sets
them) serves a legitimate upstream while an attacker, with a plain Celery client on the broker URL
the README hands every upstream (which on a Redis without ACLs is also the fleet's), sends what would
move money or the saga: the hold-release job with a threshold of zero, a hold release for a live
offer, a cancel "as ops", a forged stage hand-on, an export, a sweep, and messages with a MAC made
with a guessed secret under the fleet's real key id. None of it changes anything; each is recorded
as an intake rejection with the code ``unauthenticated`` and counted on ``/metrics``, and the
upstream's offers and the operator's own cancel go through as designed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from prometheus_client import CollectorRegistry, generate_latest

from offers_workers.domain import states
from offers_workers.local.samples import base_offer
from offers_workers.ops.metrics import OffersCollector
from tests.brokers import BROKERS, fleet_stores, rabbitmq_unavailable
from tests.conftest import RUN_ID, cli, offer_rows, wait_until
from tests.drillkit import Drill, drill

FLEET_KEY_ID = "fleet-2026a"


@pytest.fixture(scope="module", params=BROKERS)
def keyed_fleet(
    request: pytest.FixtureRequest, offers_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Drill]:
    broker = request.param
    if broker == "rabbitmq" and (reason := rabbitmq_unavailable()):
        pytest.skip(reason)
    log_dir = tmp_path_factory.mktemp(f"forged-{broker}")
    keys = {
        "OFFERS_MESSAGE_KEYS": f"{FLEET_KEY_ID}={secrets.token_urlsafe(32)}",
        "OFFERS_OPS_MESSAGE_KEYS": f"ops-2026a={secrets.token_urlsafe(32)}",
    }
    name = f"forged-{broker}"
    with fleet_stores(offers_env, broker, name, log_dir, **keys) as (_, env), drill(name, env, log_dir) as d:
        yield d


def attacker(broker_url: str) -> Celery:
    """A plain Celery client on the broker URL: no key, nothing of the project's."""
    return Celery("attacker", broker=broker_url, set_as_current=False)


def fleet_mac(d: Drill, task: str, task_id: str, kwargs: dict[str, Any]) -> str:
    """What the fleet's own MAC of a message is: the test stands in for a capture on the wire."""
    key_id, secret = d.env["OFFERS_MESSAGE_KEYS"].split("=", 1)
    text = "\n".join(
        ("offers-auth-v1", task, task_id, json.dumps(kwargs, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    )
    return f"{key_id}:{hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()}"


def forge_mac(task: str, task_id: str, kwargs: dict[str, Any]) -> str:
    """A MAC as the README describes it, under the fleet's real key id, with a guessed secret."""
    text = "\n".join(
        ("offers-auth-v1", task, task_id, json.dumps(kwargs, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    )
    return f"{FLEET_KEY_ID}:{hmac.new(secrets.token_bytes(32), text.encode(), hashlib.sha256).hexdigest()}"


def unauthenticated_rejections(d: Drill) -> list[dict[str, Any]]:
    with d.runtime.db.read() as conn:
        return list(
            conn.execute(
                "SELECT task_id, errors, raw_body FROM intake_rejections WHERE reason = 'unauthenticated' ORDER BY id"
            )
        )


def scraped_refusals(d: Drill) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry()
    registry.register(OffersCollector(d.runtime))
    counts: dict[tuple[str, str], float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("offers_unauthenticated_messages_total{"):
            labels, value = line.rsplit(" ", 1)
            found = dict(part.split("=", 1) for part in labels[labels.index("{") + 1 : -1].split(","))
            counts[(found["task"].strip('"'), found["why"].strip('"'))] = float(value)
    return counts


def holds_at_stripe(d: Drill, offer_ids: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for hold in d.runtime.stripe.list_holds():
        if hold.offer_id in offer_ids:
            found.setdefault(hold.offer_id, []).append(hold.status)
    return found


def test_an_attacker_with_a_broker_credential_moves_nothing(keyed_fleet: Drill) -> None:
    d = keyed_fleet
    tag = f"{RUN_ID}-{'rmq' if d.env['OFFERS_BROKER_URL'].startswith('amqp') else 'rds'}"
    # Given offers of a legitimate upstream, submitted with live holds, and one that risk blocked
    victims = [base_offer(f"victim-{tag}-{n}", n) for n in range(3)]
    blocked = {**base_offer(f"blocked-{tag}", 9), "buyer_id": f"risky_{tag}"}
    upstream = attacker(d.env["OFFERS_BROKER_URL"])  # the upstream's client is just as plain
    for offer in [*victims, blocked]:
        upstream.send_task("offers.submit", kwargs={"offer": offer}, queue="offers.intake", serializer="json")
    ids = [o["offer_id"] for o in victims]
    wait_until(
        lambda: (
            {r["state"] for r in offer_rows(d.runtime, ids).values()} == {states.SUBMITTED}
            and offer_rows(d.runtime, [blocked["offer_id"]]).get(blocked["offer_id"], {}).get("state")
            == states.REJECTED
            # the fleet's own release of the risky offer's hold comes after its rejection: not the attacker's
            and offer_rows(d.runtime, [blocked["offer_id"]])[blocked["offer_id"]]["hold_status"] != "held"
        ),
        timeout=90,
        message="the upstream's offers submitted and the risky one rejected, its hold released",
    )
    assert {o: s for o, s in holds_at_stripe(d, ids).items()} == {o: ["requires_capture"] for o in ids}
    before_exports = exports_of(d)
    with d.runtime.db.read() as conn:
        audit_before = conn.execute("SELECT coalesce(max(id), 0) AS id FROM audit_events").fetchone()["id"]

    # When the attacker sends what would move money or the saga, from a client with no key
    forged: list[tuple[str, dict[str, Any], str, dict[str, str]]] = [
        ("offers.release_expiring_holds", {"older_than_s": 0}, "offers.maintenance", {}),
        ("offers.release_hold", {"offer_id": ids[0], "reason": "offer_ended"}, "offers.payment", {}),
        ("offers.cancel", {"offer_id": ids[1], "reason": "ops", "actor": "ops"}, "offers.intake", {}),
        ("offers.stage.trigger_auction", {"offer_id": blocked["offer_id"]}, "offers.auction", {}),
        ("offers.stage.hold_payment", {"offer_id": ids[2]}, "offers.payment", {}),  # a replay's message
        ("offers.export_audit", {}, "offers.maintenance", {}),
        ("offers.recover", {"stuck_after_s": 0}, "offers.maintenance", {}),
        # a fleet-only task on the intake queue: the queue a message arrives on grants nothing
        ("offers.release_hold", {"offer_id": ids[2]}, "offers.intake", {}),
    ]
    # and the same with a MAC under the fleet's real key id but a guessed secret
    guessed = [
        ("offers.release_hold", {"offer_id": ids[0]}, "offers.payment"),
        ("offers.cancel", {"offer_id": ids[1], "reason": "ops", "actor": "ops"}, "offers.intake"),
    ]
    for name, kwargs, queue, _ in forged:
        upstream.send_task(name, kwargs=kwargs, queue=queue, serializer="json")
    for name, kwargs, queue in guessed:
        task_id = str(uuid.uuid4())
        upstream.send_task(
            name,
            kwargs=kwargs,
            queue=queue,
            serializer="json",
            task_id=task_id,
            headers={"offers_auth": forge_mac(name, task_id, kwargs)},
        )
    # and a message the fleet really signed (the beat's sweep, captured on the broker: the test signs it
    # with the fleet's key), sent again with a link that would have the worker send a hold release once
    # the sweep is done
    captured_id = str(uuid.uuid4())
    upstream.send_task(
        "offers.recover",
        kwargs={},
        queue="offers.maintenance",
        serializer="json",
        task_id=captured_id,
        headers={"offers_auth": fleet_mac(d, "offers.recover", captured_id, {})},
        link=upstream.signature(
            "offers.release_hold", kwargs={"offer_id": ids[2]}, queue="offers.payment", immutable=True
        ),
    )
    sent = len(forged) + len(guessed) + 1

    # Then each is recorded as unauthenticated, with the task it asked for and why
    rows = wait_until(
        lambda: (found := unauthenticated_rejections(d)) and len(found) >= sent and found,
        timeout=60,
        message=f"{sent} forged messages recorded",
    )
    assert len(rows) == sent
    messages = sorted(r["errors"][0]["message"] for r in rows)
    assert sum("no MAC" in m for m in messages) == len(forged), messages
    assert sum(f"does not verify with key {FLEET_KEY_ID}" in m for m in messages) == len(guessed), messages
    assert sum("links (callbacks, errbacks, chain, chord) are not accepted" in m for m in messages) == 1, messages
    assert all(r["errors"][0]["code"] == "unauthenticated" for r in rows)

    # and counted on /metrics, by task and why
    counted = scraped_refusals(d)
    assert sum(counted.values()) == sent, counted
    assert counted[("offers.release_hold", "no_mac")] == 2 and counted[("offers.release_hold", "bad_mac")] == 1

    # and nothing moved: every hold still held, at Stripe and in Postgres, no offer cancelled,
    # the blocked offer still rejected, no export run, no hold release or ops cancel on record
    assert holds_at_stripe(d, ids) == {o: ["requires_capture"] for o in ids}
    rows_now = offer_rows(d.runtime, [*ids, blocked["offer_id"]])
    assert {o: (r["state"], r["hold_status"]) for o, r in rows_now.items() if o in ids} == {
        o: (states.SUBMITTED, "held") for o in ids
    }
    assert rows_now[blocked["offer_id"]]["state"] == states.REJECTED
    assert exports_of(d) == before_exports
    with d.runtime.db.read() as conn:
        audit = conn.execute(
            "SELECT offer_id, kind, to_state FROM audit_events WHERE offer_id = ANY(%s) AND id > %s",
            ([*ids, blocked["offer_id"]], audit_before),
        ).fetchall()
        cancels = conn.execute("SELECT count(*) AS n FROM cancel_requests WHERE offer_id = ANY(%s)", (ids,)).fetchone()
    assert audit == [] and cancels["n"] == 0

    # While the operator's own cancel, signed with the ops key by the CLI, goes through
    done = cli("cancel", ids[1], "--reason", "ops", env=d.env)
    assert done.returncode == 0, done.stderr
    wait_until(
        lambda: offer_rows(d.runtime, [ids[1]])[ids[1]]["state"] == states.CANCELLED,
        timeout=60,
        message="the operator's cancel",
    )
    listed = json.loads(cli("cancel-requests", "list", "--json", env=d.env).stdout)
    assert [(r["offer_id"], r["actor"]) for r in listed if r["offer_id"] in ids] == [(ids[1], "ops")]
    # and its hold is released as a cancel's is; the others' holds stay
    wait_until(
        lambda: (
            holds_at_stripe(d, ids)
            == {ids[0]: ["requires_capture"], ids[1]: ["canceled"], ids[2]: ["requires_capture"]}
        ),
        timeout=60,
        message="the cancelled offer's hold released, the others kept",
    )


def exports_of(d: Drill) -> int:
    with d.runtime.db.read() as conn:
        return conn.execute("SELECT count(*) AS n FROM audit_exports").fetchone()["n"]
