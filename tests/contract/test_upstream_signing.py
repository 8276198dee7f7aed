"""Signed upstreams, as docs/upstream.md's *Signed upstreams* tells a producer to sign: its Python client
and its Node.js producer, run as written (only the broker URL and the secrets filled in), against the
Procfile's fleet with ``OFFERS_UPSTREAM_SIGNING`` on. Each signed offer is submitted and names its
upstream on its audit trail; an unsigned one, and an upstream's cancel claiming ops, are refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from offers_workers.domain import states
from offers_workers.local.samples import base_offer
from tests.brokers import fleet_stores
from tests.conftest import cli, offer_rows, wait_until
from tests.contract.markdown import read_blocks
from tests.contract.test_readme import run_python, stranger_env, with_urls
from tests.drillkit import Drill, drill

SNIPPETS = read_blocks().snippets
CHECKOUT, MOBILE = secrets.token_urlsafe(32), secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def signing_fleet(offers_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    log_dir = tmp_path_factory.mktemp("signed-upstreams")
    settings = {"OFFERS_UPSTREAM_SIGNING": "1", "OFFERS_UPSTREAM_KEYS": f"checkout={CHECKOUT},mobile={MOBILE}"}
    with (
        fleet_stores(offers_env, "redis", "signed", log_dir, **settings) as (_, env),
        drill("signed", env, log_dir) as d,
    ):
        yield d


def audit_senders(d: Drill, offer_id: str) -> list[tuple[str | None, str | None]]:
    with d.runtime.db.read() as conn:
        rows = conn.execute(
            "SELECT to_state, data->>'sender' AS sender FROM audit_events WHERE offer_id = %s AND kind = 'transition'"
            " AND to_state IN ('received', 'cancelled') ORDER BY id",
            (offer_id,),
        ).fetchall()
    return [(r["to_state"], r["sender"]) for r in rows]


def refusals(d: Drill) -> list[str]:
    with d.runtime.db.read() as conn:
        rows = conn.execute("SELECT errors FROM intake_rejections WHERE reason = 'unauthenticated' ORDER BY id")
        return [r["errors"][0]["message"] for r in rows]


def signed(secret: str, key_id: str, task: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """As the upstream contract's Python client signs (the test's own copy, for the messages it sends itself)."""
    task_id = str(uuid.uuid4())
    text = "\n".join(
        ("offers-auth-v1", task, task_id, json.dumps(kwargs, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    )
    mac = hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()
    return {"task_id": task_id, "headers": {"offers_auth": f"{key_id}:{mac}"}}


def send_signed(client: Celery, task: str, kwargs: dict[str, Any], secret: str) -> None:
    """Sent by the checkout upstream, its MAC made with ``secret``."""
    client.send_task(
        task, kwargs=kwargs, queue="offers.intake", serializer="json", **signed(secret, "checkout", task, kwargs)
    )


def test_the_readmes_python_client_signs_and_its_offer_names_the_upstream(signing_fleet: Drill, tmp_path) -> None:
    d = signing_fleet
    code = with_urls(SNIPPETS["upstream-signed-client"].text, broker=d.env["OFFERS_BROKER_URL"])
    code = code.replace("the checkout service's secret from OFFERS_UPSTREAM_KEYS", CHECKOUT)
    sent = run_python(code, tmp_path)
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: offer_rows(d.runtime, ["off_1005"]).get("off_1005"), timeout=60, message="off_1005 recorded")
    wait_until(
        lambda: offer_rows(d.runtime, ["off_1005"])["off_1005"]["state"] == states.SUBMITTED,
        timeout=60,
        message="off_1005 submitted",
    )
    assert audit_senders(d, "off_1005") == [(states.RECEIVED, "upstream:checkout")]


def test_the_readmes_node_producer_signs_and_its_offer_names_the_upstream(signing_fleet: Drill, tmp_path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed, so the upstream contract's JavaScript producer cannot run here")
    d = signing_fleet
    code = SNIPPETS["upstream-signed-node"].text.replace(
        "the mobile service's secret from OFFERS_UPSTREAM_KEYS", MOBILE
    )
    made = subprocess.run([node, "-e", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    (tmp_path / "envelope.json").write_text(made.stdout)
    # Pushed as the upstream contract's raw-redis-cli line pushes an envelope.
    push = with_urls(SNIPPETS["raw-redis-cli"].text, broker=d.env["OFFERS_BROKER_URL"])
    pushed = subprocess.run(["bash", "-c", push], capture_output=True, text=True, cwd=tmp_path, env=stranger_env())
    assert pushed.returncode == 0, pushed.stderr
    wait_until(
        lambda: (offer_rows(d.runtime, ["off_1006"]).get("off_1006") or {}).get("state") == states.SUBMITTED,
        timeout=60,
        message="off_1006 submitted",
    )
    assert audit_senders(d, "off_1006") == [(states.RECEIVED, "upstream:mobile")]


def test_unsigned_offers_and_an_upstream_claiming_ops_are_refused(signing_fleet: Drill) -> None:
    d = signing_fleet
    client = Celery("upstream", broker=d.env["OFFERS_BROKER_URL"], set_as_current=False)
    before = len(refusals(d))
    # An unsigned offer, one signed with a secret the fleet does not hold, and a good one
    unsigned, forged, good = (base_offer(f"{kind}-signing", n) for n, kind in enumerate(("unsigned", "forged", "good")))
    client.send_task("offers.submit", kwargs={"offer": unsigned}, queue="offers.intake", serializer="json")
    send_signed(client, "offers.submit", {"offer": forged}, secrets.token_urlsafe(32))
    send_signed(client, "offers.submit", {"offer": good}, CHECKOUT)
    ids = [good["offer_id"]]
    wait_until(
        lambda: (offer_rows(d.runtime, ids).get(ids[0]) or {}).get("state") == states.SUBMITTED,
        timeout=60,
        message="the signed offer submitted",
    )
    # When checkout cancels it "as ops" with its own key, then as the buyer
    as_ops = {"offer_id": ids[0], "reason": "ops", "actor": "ops"}
    as_buyer = {"offer_id": ids[0], "reason": "buyer_withdrew", "actor": "buyer"}
    for kwargs in (as_ops, as_buyer):
        send_signed(client, "offers.cancel", kwargs, CHECKOUT)
    wait_until(
        lambda: offer_rows(d.runtime, ids)[ids[0]]["state"] == states.CANCELLED, timeout=60, message="the cancel"
    )
    # Then the unsigned and the forged offers never became offers, and the cancel as ops changed nothing
    refused = wait_until(lambda: (r := refusals(d)[before:]) and len(r) >= 3 and r, timeout=30, message="3 refusals")
    assert len(refused) == 3
    assert offer_rows(d.runtime, [unsigned["offer_id"], forged["offer_id"]]) == {}
    assert sorted(m.split(": ", 1)[1] for m in refused) == sorted(
        [
            "no MAC",
            "the MAC does not verify with key checkout",
            "a cancel as ops needs a MAC of ops, not of upstream:checkout",
        ]
    )
    # and the cancel that went through names the upstream and the buyer
    assert audit_senders(d, ids[0]) == [(states.RECEIVED, "upstream:checkout"), (states.CANCELLED, "upstream:checkout")]
    listed = json.loads(cli("cancel-requests", "list", "--offer", ids[0], "--json", env=d.env).stdout)
    assert [(r["actor"], r["outcome"]) for r in listed] == [("buyer", "cancelled")]
