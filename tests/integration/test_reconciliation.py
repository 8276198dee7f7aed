"""Reconciliation with Stripe as the record of holds, run as an operator runs it
(`offers-workers holds reconcile`), on a database and a Stripe sandbox of its own so that no other
test's holds are in sight. The offers are brought to where each case needs them by the saga's own
stage functions, in this process; the kill window is the stage's own Stripe call with its commit lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from offers_workers.domain import states
from offers_workers.local.samples import base_offer
from offers_workers.local.sandbox import Sandbox, clear_faults, ensure_aws_resources, set_fault
from offers_workers.local.stack import load_sample_policy
from offers_workers.runtime import Runtime
from offers_workers.saga import cancellation, intake, stages
from offers_workers.store import offers
from tests.conftest import RUN_ID, cli, new_id, offer_rows, wait_until
from tests.drillkit import FAST_RECOVERY, drill, settings_for
from tests.outages import all_in

#: The kill-window drill's reconciliation interval: the beat's job runs this often.
CYCLE_S = 5


@dataclass
class World:
    env: dict[str, str]
    runtime: Runtime
    sandbox: Sandbox
    database_url: str

    def reconcile(self, *args: str) -> Any:
        return cli("holds", "reconcile", *args, env=self.env)

    def offer_in(self, state: str) -> str:
        """A new offer walked by the stage functions up to ``state``."""
        offer = base_offer(new_id("rec"), 3)
        assert intake.submit(self.runtime, offer).outcome == "accepted"
        walk = {states.VALIDATED: [stages.validate], states.PAYMENT_HELD: [stages.validate, stages.hold_payment]}
        for stage in walk[state]:
            stage(self.runtime, offer["offer_id"])
        return offer["offer_id"]

    def intents(self, offer_id: str) -> list[tuple[str, str]]:
        return [(h.payment_intent_id, h.status) for h in self.runtime.stripe.list_holds() if h.offer_id == offer_id]

    def offer(self, offer_id: str) -> offers.Offer:
        with self.runtime.db.read() as conn:
            found = offers.load_offer(conn, offer_id)
        assert found is not None
        return found

    def audit(self, offer_id: str) -> list[dict[str, Any]]:
        with psycopg.connect(self.database_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            cur.execute(
                "SELECT kind, actor, reason, data FROM audit_events WHERE offer_id = %s ORDER BY id", (offer_id,)
            )
            return cur.fetchall()


@pytest.fixture
def world(offers_env, scratch_database: str) -> Iterator[World]:
    box = Sandbox(ports={"stripe": 0, "sift": 0, "plaid": 0, "aws": 0, "segment": 0})
    box.start()
    try:
        # Every hold is old enough to judge: the grace for a stage about to commit is the test's to choose.
        env = {**offers_env, **box.settings_env(), "OFFERS_DATABASE_URL": scratch_database}
        env["OFFERS_RECONCILE_GRACE_SECONDS"] = "0"
        settings = settings_for(env)
        load_sample_policy(settings)
        runtime = Runtime(settings)
        try:
            yield World(env, runtime, box, scratch_database)
        finally:
            runtime.close()
    finally:
        box.stop()


def kill_window_orphan(world: World) -> str:
    """The kill window: the payment stage's Stripe call answered, its worker died before the commit,
    and a cancel won the offer meanwhile. Stripe holds the buyer's card; our records know nothing."""
    offer_id = world.offer_in(states.VALIDATED)
    # The stage's own partner call, as the killed worker made it; its commit never happened
    stages.payment_outcome(world.offer(offer_id).payload, world.runtime.stripe, world.runtime.plaid)
    cancellation.cancel(world.runtime, offer_id, "buyer_withdrew", "buyer")
    assert world.offer(offer_id).state == states.CANCELLED and world.offer(offer_id).hold_status == "none"
    return offer_id


def test_reconcile_releases_an_orphan_of_the_kill_window_and_audits_it(world: World) -> None:
    offer_id = kill_window_orphan(world)
    [(intent, status)] = world.intents(offer_id)
    assert status == "requires_capture"

    # A dry run says what it would do and changes nothing
    dry = world.reconcile("--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert [(f["offer_id"], f["payment_intent_id"]) for f in json.loads(dry.stdout)["released"]] == [(offer_id, intent)]
    assert world.intents(offer_id) == [(intent, "requires_capture")]

    done = world.reconcile()
    assert done.returncode == 0, done.stderr
    assert "released" in done.stdout and intent in done.stdout
    assert world.intents(offer_id) == [(intent, "canceled")]  # one intent, released
    [released] = [e for e in world.audit(offer_id) if e["kind"] == "hold_released"]
    assert released["actor"] == "offers.reconcile_holds" and released["data"]["payment_intent_id"] == intent
    assert released["reason"] == "reconciliation: offer cancelled"

    # A second run finds nothing more to do
    again = world.reconcile("--json")
    assert again.returncode == 0 and json.loads(again.stdout)["released"] == []


def test_reconcile_releases_a_hold_for_an_offer_that_does_not_exist(world: World) -> None:
    ghost = new_id("ghost")
    hold = world.runtime.stripe.place_hold(
        offer_id=ghost, amount_cents=1500, currency="USD", payment_method_id="pm_card_visa", metadata={}
    )
    done = world.reconcile("--json")
    assert done.returncode == 0, done.stderr
    [finding] = json.loads(done.stdout)["released"]
    assert (finding["payment_intent_id"], finding["why"]) == (hold.payment_intent_id, "no such offer")
    assert world.intents(ghost) == [(hold.payment_intent_id, "canceled")]


def test_reconcile_resumes_after_a_cursor(world: World) -> None:
    """Stripe's list runs newest first: `--after` an intent takes up the older ones only, as a run
    interrupted there says to."""
    ghosts = [new_id("ghost") for _ in range(2)]
    older, newer = (
        world.runtime.stripe.place_hold(
            offer_id=g, amount_cents=1500, currency="USD", payment_method_id="pm_card_visa", metadata={}
        )
        for g in ghosts
    )
    done = world.reconcile("--after", newer.payment_intent_id, "--json")
    assert done.returncode == 0, done.stderr
    assert [f["payment_intent_id"] for f in json.loads(done.stdout)["released"]] == [older.payment_intent_id]
    assert world.intents(ghosts[1]) == [(newer.payment_intent_id, "requires_capture")]


def test_reconcile_flags_a_hold_stripe_no_longer_has_and_touches_nothing(world: World) -> None:
    offer_id = world.offer_in(states.PAYMENT_HELD)
    held = world.offer(offer_id)
    assert held.hold_status == "held" and held.payment_intent_id
    # Someone cancelled the authorization in Stripe's dashboard: the offer still says held
    world.runtime.stripe.release_hold(offer_id=offer_id, payment_intent_id=held.payment_intent_id)

    done = world.reconcile("--json")
    assert done.returncode == 1, done.stdout + done.stderr  # a finding waits for an operator
    [flag] = json.loads(done.stdout)["flagged"]
    assert (flag["kind"], flag["offer_id"], flag["why"]) == ("held_not_at_stripe", offer_id, "Stripe says canceled")
    after = world.offer(offer_id)
    assert (after.state, after.hold_status, after.payment_intent_id) == (held.state, "held", held.payment_intent_id)

    # The finding is counted where on-call looks, once however often the job runs
    world.reconcile()
    stats = cli("stats", "--json", env=world.env)
    assert json.loads(stats.stdout)["hold_findings"] == {"held_not_at_stripe": 1}
    health = cli("health", env=world.env)
    assert health.returncode == 1 and "Runbook symptom: Holds that do not match Stripe" in health.stdout


def test_reconcile_during_a_stripe_outage_releases_nothing_and_says_so(world: World) -> None:
    offer_id = kill_window_orphan(world)
    set_fault(world.sandbox, "stripe", status=503, rate=1.0)
    try:
        down = world.reconcile()
    finally:
        clear_faults(world.sandbox, "stripe")
    assert down.returncode == 1 and "Stripe did not answer" in down.stderr
    assert [status for _, status in world.intents(offer_id)] == ["requires_capture"]
    # Once Stripe answers, the next run releases it
    assert world.reconcile().returncode == 0
    assert [status for _, status in world.intents(offer_id)] == ["canceled"]


def test_reconcile_closes_the_kill_window_drill(offers_env, scratch_database: str, tmp_path) -> None:
    """The kill window on a running fleet: worker_partners dies between Stripe's answer and its commit
    (failpoint crash_after_hold) while the buyer's cancel races it; the offer ends cancelled with a
    hold nothing recorded, and the beat's reconciliation releases it within one cycle."""
    victim = f"kw{RUN_ID}"
    box = Sandbox(ports={"stripe": 0, "sift": 0, "plaid": 0, "aws": 0, "segment": 0})
    box.start()
    try:
        overrides = {
            **box.settings_env(),
            "OFFERS_DATABASE_URL": scratch_database,
            "OFFERS_FAILPOINTS": f"crash_after_hold:{victim}",
            "OFFERS_RECONCILE_GRACE_SECONDS": "0",
            "OFFERS_RECONCILE_INTERVAL_SECONDS": str(CYCLE_S),
            **FAST_RECOVERY,
        }
        settings = settings_for({**offers_env, **overrides})
        load_sample_policy(settings)
        ensure_aws_resources(settings)
        with drill("killwindow", offers_env, tmp_path / "logs", **overrides) as d:
            samples = d.send(60, seed=11)  # the rest of the traffic, around the kill
            victims = [base_offer(f"{victim}_{n}", n) for n in range(3)]
            for offer in victims:
                d.app.send_task("offers.submit", kwargs={"offer": offer})
            ids = [o["offer_id"] for o in victims]

            def held_at_stripe() -> dict[str, str]:
                return {h.offer_id: h.status for h in d.runtime.stripe.list_holds() if h.offer_id in ids}

            # Stripe holds the first victim's card and its worker is gone: the cancels race the restart
            wait_until(lambda: held_at_stripe() and d.fleet.dead(), timeout=60, message="the kill after the hold")
            for offer_id in ids:
                d.app.send_task(
                    "offers.cancel", kwargs={"offer_id": offer_id, "reason": "buyer_withdrew", "actor": "buyer"}
                )
            deadline = time.monotonic() + 120
            while not all_in(d.runtime, ids, states.CANCELLED) and time.monotonic() < deadline:
                d.restart_dead_workers()
                time.sleep(0.25)
            assert all_in(d.runtime, ids, states.CANCELLED), offer_rows(d.runtime, ids)
            # The window was hit: a cancelled offer that never recorded a hold, and an intent at Stripe
            hit = [o for o, row in offer_rows(d.runtime, ids).items() if row["payment_intent_id"] is None]
            hit = [o for o in hit if o in held_at_stripe()]
            assert hit, held_at_stripe()

            # The beat's reconciliation (every CYCLE_S) releases each, with an audit row
            wait_until(
                lambda: all(held_at_stripe()[o] == "canceled" for o in hit),
                timeout=CYCLE_S * 2 + 30,
                message="reconciliation to release the orphans",
            )
            lags = [release_lag(scratch_database, o) for o in hit]
            assert max(lags) < CYCLE_S + 10, lags  # the first run after the cancel, give or take its own time
            d.drain(samples)
            d.figures["faults"] = (
                f"worker_partners killed between Stripe's answer and its commit; {len(hit)} of {len(ids)} offers"
                f" cancelled meanwhile with a hold nothing recorded, released by reconciliation {max(lags):.1f} s"
                " after the cancel at most"
            )
            figures = d.verify(samples, others=ids)
            assert figures["orphan_holds"] == 0 and figures["duplicate_holds"] == 0
            audited = [e for o in hit for e in audit_rows(scratch_database, o) if e["kind"] == "hold_released"]
            assert {e["actor"] for e in audited} == {"offers.reconcile_holds"} and len(audited) == len(hit)
    finally:
        box.stop()


def audit_rows(database_url: str, offer_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT at, kind, actor, reason, data FROM audit_events WHERE offer_id = %s ORDER BY id", (offer_id,)
        )
        return cur.fetchall()


def release_lag(database_url: str, offer_id: str) -> float:
    """Seconds from the offer's cancellation to reconciliation's release of its hold."""
    with psycopg.connect(database_url) as conn:
        [(lag,)] = conn.execute(
            "SELECT extract(epoch FROM r.at - o.cancelled_at)::float8 FROM offers o JOIN audit_events r"
            " ON r.offer_id = o.offer_id AND r.kind = 'hold_released' WHERE o.offer_id = %s",
            (offer_id,),
        ).fetchall()
    return lag
