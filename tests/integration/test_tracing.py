"""Distributed traces across real processes: the Procfile's workers export OTLP/HTTP to a receiver
this test runs (decoding the protobuf with opentelemetry-proto), configured by the standard
``OTEL_*`` variables alone, as docs/production.md's "Tracing" says.

One connected trace per offer spanning both worker types, with partner spans; a partner retry and
a dead-letter replay stay in the offer's trace; an upstream's own ``traceparent`` is continued; a
collector that is down costs no offer.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import time
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from offers_workers.domain import states
from offers_workers.local.samples import base_offer
from offers_workers.local.sandbox import clear_faults, set_fault
from tests.conftest import cli, new_id, offer_rows, wait_until
from tests.drillkit import FAST_RECOVERY, Drill, drill
from tests.otlp import Receiver, Span, tree
from tests.outages import all_in

pytestmark = pytest.mark.integration

#: What an operator sets (docs/production.md, "Tracing"): the endpoint, and a short batch delay so the test need not wait 5 s.
TRACED = {"OTEL_SERVICE_NAME": "offers-workers", "OTEL_BSP_SCHEDULE_DELAY": "200"}
#: The demo's default size (`offers-workers demo --offers`).
DEMO_OFFERS = 200
#: Where each saga stage's run sends its partner calls.
SAGA_STAGES = {"validation", "payment", "risk", "auction"}


@pytest.fixture(scope="module")
def receiver() -> Any:
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def traced(offers_env: dict[str, str], receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Any:
    log_dir = tmp_path_factory.mktemp("traced-fleet")
    env = {**TRACED, **FAST_RECOVERY, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    with drill("traced", offers_env, log_dir, **env) as d:
        yield d


def quiet(receiver: Receiver, traces: Collection[str], for_s: float = 1.5, timeout: float = 60) -> list[Span]:
    """The spans once none of ``traces`` has arrived for ``for_s`` (the workers' batches are out).

    Only those traces: the fleet's periodic jobs (the sweep every 2 s, the sealer) send spans of
    their own all the time, so the whole stream is never quiet for long.
    """
    deadline = time.monotonic() + timeout
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = sum(1 for span in receiver.kept if span.trace_id in traces)
        if count != seen:
            seen, since = count, time.monotonic()
        elif time.monotonic() - since >= for_s:
            return receiver.kept
        time.sleep(0.1)
    raise AssertionError(f"spans of {len(traces)} trace(s) still arriving after {timeout:.0f} s")


def trace_ids(d: Drill, offer_ids: list[str]) -> dict[str, str]:
    """Each offer's trace id as `offers show` gives it (the traceparent kept with the offer)."""
    with d.runtime.db.transaction() as conn:
        rows = conn.execute(
            "SELECT offer_id, trace_parent FROM offers WHERE offer_id = ANY(%s)", (offer_ids,)
        ).fetchall()
    return {r["offer_id"]: r["trace_parent"].split("-")[1] for r in rows if r["trace_parent"]}


def connected(spans: list[Span]) -> list[Span]:
    """The spans whose parent is not in the trace: a connected trace has exactly one (its root)."""
    ids = {s.span_id for s in spans}
    return [s for s in spans if s.parent_id not in ids]


def partner_of(span: Span, d: Drill) -> str | None:
    """Which partner a client span called: Stripe, Sift or Plaid over HTTP, or AWS through boto3."""
    if span.attributes.get("rpc.system") == "aws-api":
        return f"aws:{span.attributes.get('rpc.service')}"
    url = str(span.attributes.get("http.url") or span.attributes.get("url.full") or "")
    bases = {"stripe": d.runtime.settings.stripe_api_base, "sift": d.runtime.settings.sift_api_url}
    bases["plaid"] = d.runtime.settings.plaid_host
    for partner, base in bases.items():
        if url.startswith(base.rstrip("/")):
            # named by the partner it calls, so a trace reads at a glance
            assert span.name.startswith(f"{partner} ") and span.attributes["peer.service"] == partner, span.name
            return partner
    return None


def test_each_offer_is_one_connected_trace_across_both_worker_types(
    traced: Drill, receiver: Receiver, sandbox: Any
) -> None:
    d = traced.scenario("traced")
    # Given Stripe answers 503 to a fifth of its requests, so some offers retry their payment stage
    set_fault(sandbox, "stripe", status=503, rate=0.2)
    try:
        samples = d.samples(DEMO_OFFERS, seed=20)
        d.submit(samples)
        # and an upstream that is itself traced sends one offer, with its traceparent in the message headers
        upstream_trace, upstream_span = secrets.token_hex(16), secrets.token_hex(8)
        upstream_offer = base_offer(new_id("upstream"), 7)
        upstream = Celery(broker=d.env["OFFERS_BROKER_URL"])
        upstream.send_task(
            "offers.submit",
            kwargs={"offer": upstream_offer},
            queue="offers.intake",
            serializer="json",
            headers={"traceparent": f"00-{upstream_trace}-{upstream_span}-01"},
        )
        d.drain(samples)
        wait_until(
            lambda: all_in(d.runtime, [upstream_offer["offer_id"]], states.SUBMITTED),
            message="the traced upstream's offer to be submitted",
        )
    finally:
        clear_faults(sandbox, "stripe")
        upstream.close()
    d.figures["faults"] = "Stripe 503 on 20 % of requests; OTLP to a test receiver"
    d.verify(samples)
    offered = [s.offer_id for s in samples if s.scenario.state is not None]
    ids = trace_ids(d, [*offered, upstream_offer["offer_id"]])
    spans = quiet(receiver, set(ids.values()))
    traces = receiver.traces()

    # Then every offer recorded its trace, and the trace is one connected tree
    assert set(ids) == {*offered, upstream_offer["offer_id"]}
    rows = offer_rows(d.runtime, offered)
    retried, both_types, partners_seen = [], 0, Counter[str]()
    for offer_id in offered:
        spans_of = traces.get(ids[offer_id], [])
        assert spans_of, f"{offer_id}: no spans for trace {ids[offer_id]}"
        roots = connected(spans_of)
        assert len(roots) == 1 and roots[0].parent_id == "", f"{offer_id}: not one tree: {[r.name for r in roots]}"
        # every stage span of the offer, retries included, is in that one trace
        stage_runs = [
            s
            for s in spans
            if s.attributes.get("offer.id") == offer_id and s.attributes.get("offer.stage") in SAGA_STAGES
        ]
        assert {s.trace_id for s in stage_runs} <= {ids[offer_id]}, f"{offer_id}: a stage ran in another trace"
        attempts = Counter(s.attributes["offer.stage"] for s in stage_runs)
        if any(n > 1 for n in attempts.values()):
            retried.append(offer_id)
        reached_payment = rows[offer_id]["payment_intent_id"] is not None or rows[offer_id]["state"] == states.SUBMITTED
        kinds = {s.resource.get("offers.process") for s in spans_of}
        if reached_payment:
            # the validation on the prefork worker, the payment on the thread-pool worker
            assert {"prefork", "threads"} <= kinds, f"{offer_id}: {kinds}"
            both_types += 1
        # (boto3's SNS publish is a producer span: it also carries the trace to the topic's subscribers)
        called = {partner_of(s, d) for s in spans_of if s.kind in ("client", "producer")} - {None}
        partners_seen.update(called)
        if rows[offer_id]["state"] == states.SUBMITTED:
            card = rows[offer_id]["payment_method"] == "card"
            expected = {"stripe" if card else "plaid", "sift", "aws:EventBridge", "aws:SNS"}
            assert expected <= called, f"{offer_id}: partner spans {called}\n{tree(spans_of)}\n" + "\n".join(
                f"{s.name} {s.attributes}" for s in spans_of if s.kind in ("client", "producer")
            )
    assert retried, "no offer retried a stage under the Stripe fault: the retry case went untested"
    assert both_types > DEMO_OFFERS // 4, "too few offers reached the payment stage to show both worker types"
    assert partners_seen["plaid"] > 0 and partners_seen["stripe"] > 0

    # And a retried offer's trace holds the failed attempt and the one that succeeded
    one = retried[0]
    attempts = [s for s in traces[ids[one]] if s.attributes.get("offer.outcome") == "retry"]
    assert attempts and all(s.attributes.get("offer.reason") for s in attempts)

    # And the traced upstream's trace is continued: its span is the parent of the intake's
    assert ids[upstream_offer["offer_id"]] == upstream_trace
    intake = [s for s in traces[upstream_trace] if s.attributes.get("offer.stage") == "intake"]
    assert [s.parent_id for s in intake] == [upstream_span]

    # And no span carries a buyer's email or IP, or a partner secret
    secrets_ = [d.runtime.settings.secret(k) for k in ("stripe_api_key", "sift_api_key", "plaid_secret")]
    words = [w for w in secrets_ if w] + ["@example.com", "203.0.113.9"]
    for span in spans:
        text = json.dumps([span.name, span.attributes, span.resource], default=str)
        assert not [w for w in words if w in text], f"{span.name} carries {[w for w in words if w in text]}"

    # And the worker logs carry the trace and span ids of the offer they speak of
    logged = [
        json.loads(line)
        for path in Path(d.fleet.log_dir).glob("*worker*.log")
        for line in path.read_text().splitlines()
        if line.startswith("{")
    ]
    about = [e for e in logged if e.get("offer_id") in ids and "trace_id" in e]
    assert about, "no log line of an offer carries a trace_id"
    assert all(e["trace_id"] == ids[e["offer_id"]] for e in about if e.get("stage") in SAGA_STAGES)

    example = next(o for o in retried if rows[o]["state"] == states.SUBMITTED) if retried else offered[0]
    print(f"\ntrace of {example} ({ids[example]}):\n{tree(traces[ids[example]])}")


def test_a_replay_from_the_dlq_continues_the_offers_trace(traced: Drill, receiver: Receiver, sandbox: Any) -> None:
    d = traced.scenario("traced replay")
    # Given an offer dead-lettered at the risk stage while Sift was down
    set_fault(sandbox, "sift", status=503, rate=1.0)
    try:
        offer = base_offer(new_id("replayed"), 3)
        d.app.send_task("offers.submit", kwargs={"offer": offer})
        offer_id = offer["offer_id"]
        wait_until(lambda: all_in(d.runtime, [offer_id], states.DEAD_LETTERED), timeout=90, message="dead-lettered")
    finally:
        clear_faults(sandbox, "sift")
    # When the operator, with the same OTEL_* settings, replays it from the CLI
    listed = json.loads(cli("dlq", "list", "--stage", "risk", "--json", env=d.env).stdout)
    entry = next(e["id"] for e in listed if e["offer_id"] == offer_id)
    replay = cli("dlq", "replay", str(entry), env=d.env)
    assert replay.returncode == 0, replay.stderr
    wait_until(lambda: all_in(d.runtime, [offer_id], states.SUBMITTED), message="replayed offer to be submitted")
    # Then `offers show` names the trace, and the whole story is that one trace
    shown = cli("offers", "show", offer_id, "--json", env=d.env)
    trace_id = json.loads(shown.stdout)["trace_id"]
    quiet(receiver, {trace_id})
    assert trace_id and trace_id in cli("offers", "show", offer_id, env=d.env).stdout
    spans = receiver.traces()[trace_id]
    assert len(connected(spans)) == 1
    replays = [s for s in spans if s.name.startswith("dlq replay")]
    assert len(replays) == 1 and replays[0].resource.get("offers.process") == "cli"
    # linked to the operator's own run of the CLI, which is a trace of its own
    assert replays[0].links and replays[0].links[0][0] != trace_id
    after = [s for s in spans if s.start_ns > replays[0].start_ns and s.attributes.get("offer.stage") == "risk"]
    assert [s.attributes.get("offer.outcome") for s in after] == [states.RISK_CLEARED]
    dead = [s for s in spans if s.attributes.get("offer.outcome") == "dead_lettered"]
    assert len(dead) == 1

    # When the buyer then withdraws, through a traced upstream of its own
    cancel_trace = secrets.token_hex(16)
    upstream = Celery(broker=d.env["OFFERS_BROKER_URL"])
    upstream.send_task(
        "offers.cancel",
        kwargs={"offer_id": offer_id, "reason": "buyer_withdrew", "actor": "buyer"},
        queue="offers.intake",
        serializer="json",
        headers={"traceparent": f"00-{cancel_trace}-{secrets.token_hex(8)}-01"},
    )
    upstream.close()
    wait_until(
        lambda: offer_rows(d.runtime, [offer_id])[offer_id]["hold_status"] == "released", message="hold released"
    )
    quiet(receiver, {trace_id, cancel_trace})
    # Then the cancel runs in the upstream's trace, and the hold's release and the offer's event in the offer's
    cancel_runs = [s for s in receiver.traces()[cancel_trace] if s.attributes.get("offer.stage") == "cancellation"]
    assert [s.attributes.get("offer.outcome") for s in cancel_runs] == ["cancelled"]
    spans = receiver.traces()[trace_id]
    resumed = [s for s in spans if s.name.startswith("cancellation ")]
    assert resumed and all(s.links and s.links[0][0] == cancel_trace for s in resumed)
    assert len(connected(spans)) == 1
    print(f"\ntrace of replayed {offer_id} ({trace_id}):\n{tree(spans)}")


def test_the_recovery_sweeps_resend_continues_the_offers_trace(traced: Drill, receiver: Receiver) -> None:
    d = traced.scenario("traced sweep")
    # Given the thread-pool worker is away, and the payment message of a validated offer is lost
    partners = d.fleet.processes["worker_partners"]
    os.killpg(partners.pid, signal.SIGTERM)
    partners.wait(timeout=60)
    offer = base_offer(new_id("swept"), 5)
    offer_id = offer["offer_id"]
    d.app.send_task("offers.submit", kwargs={"offer": offer})
    wait_until(lambda: all_in(d.runtime, [offer_id], states.VALIDATED), message="validated")
    assert redis.Redis.from_url(d.env["OFFERS_BROKER_URL"]).delete("offers.payment") == 1
    # When the worker is back, the recovery sweep finds the offer stuck and re-sends its stage
    d.restart_dead_workers()
    wait_until(lambda: all_in(d.runtime, [offer_id], states.SUBMITTED), timeout=90, message="swept offer submitted")
    trace_id = trace_ids(d, [offer_id])[offer_id]
    quiet(receiver, {trace_id})
    # Then the re-send and the rest of the saga are in the offer's one trace, linked to the sweep's run
    spans = receiver.traces()[trace_id]
    assert len(connected(spans)) == 1
    swept = [s for s in spans if s.name == "recovery sweep offers.stage.hold_payment"]
    assert len(swept) == 1 and swept[0].links and swept[0].links[0][0] != trace_id
    # the sweep's run is a trace of its own: its span ends after the re-send's
    wait_until(lambda: any(s.span_id == swept[0].links[0][1] for s in receiver.kept), message="the sweep's span")
    sweep_run = [s for s in receiver.kept if s.span_id == swept[0].links[0][1]]
    assert [s.name for s in sweep_run] == ["run/offers.recover"]
    assert [s.attributes.get("offer.outcome") for s in spans if s.attributes.get("offer.stage") == "payment"] == [
        states.PAYMENT_HELD
    ]


def test_a_collector_that_is_down_costs_no_offer(offers_env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed
    with drill(
        "untraceable", offers_env, tmp_path, ("worker", "worker_partners"), OTEL_EXPORTER_OTLP_ENDPOINT=closed, **TRACED
    ) as d:
        d = d.scenario("collector down")
        samples = d.send(40, seed=21)
        d.drain(samples, timeout=120)
        d.figures["faults"] = "OTLP endpoint refusing connections"
        d.verify(samples)
        assert d.figures["drain_s"] < 60, d.figures
