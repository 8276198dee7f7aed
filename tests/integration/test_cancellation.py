"""Cancellation at any moment: real worker processes, real Postgres and Redis, the sandbox, and
events read back from the bus.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
import yaml

from offers_workers.domain import states
from offers_workers.local.fleet import Fleet, read_procfile
from offers_workers.local.samples import base_offer
from offers_workers.ops import reports
from offers_workers.saga import cancellation, intake
from tests.bus import BusReader
from tests.conftest import RUN_ID, cli, new_id, offer_rows, wait_until
from tests.outages import through_sift_outage
from tests.races import cancelled_events, holds_by_offer, settled_cancelled

pytestmark = pytest.mark.usefixtures("fleet")


@pytest.fixture(scope="module")
def bus(settings) -> BusReader:
    return BusReader(settings)


def test_a_cancel_sent_twice_publishes_one_event_and_releases_once(celery_app, runtime, bus) -> None:
    offer = base_offer(new_id("twice"), 1)
    celery_app.send_task("offers.submit", kwargs={"offer": offer})
    offer_id = offer["offer_id"]
    wait_until(
        lambda: offer_rows(runtime, [offer_id]).get(offer_id, {}).get("state") == states.SUBMITTED, message="submitted"
    )

    assert cli("cancel", offer_id, "--reason", "maker_rejected", "--actor", "maker").returncode == 0
    assert cli("cancel", offer_id, "--reason", "maker_rejected", "--actor", "maker").returncode == 0

    wait_until(lambda: settled_cancelled(runtime, [offer_id]), message="cancelled")
    wait_until(lambda: len(_outcomes(runtime, offer_id)) == 2, message="both requests recorded")
    assert _outcomes(runtime, offer_id) == ["cancelled", "already_cancelled"]
    with runtime.db.transaction() as conn:
        releases = conn.execute(
            "SELECT count(*) AS n FROM audit_events WHERE offer_id = %s AND kind = 'hold_released'", (offer_id,)
        ).fetchone()["n"]
    assert releases == 1
    assert holds_by_offer(runtime, [offer_id]) == {offer_id: ["canceled"]}
    on_bus, on_sns = cancelled_events(bus, [offer_id])
    assert (on_bus[offer_id], on_sns[offer_id]) == (1, 1)
    assert offer_rows(runtime, [offer_id])[offer_id]["reason"] == "maker_rejected"


def test_a_cancel_racing_a_dlq_replay_ends_cancelled_with_one_event_and_one_release(
    celery_app, runtime, sandbox, bus
) -> None:
    # Given offers dead-lettered at the risk stage (Sift down), holding their card
    ids = through_sift_outage(celery_app, runtime, sandbox, "replayrace", 5)
    with runtime.db.transaction() as conn:
        entries = [
            r["id"]
            for r in conn.execute("SELECT id FROM dead_letters WHERE offer_id = ANY(%s) AND status = 'pending'", (ids,))
        ]
    assert len(entries) == 5

    # When an operator replays them while the buyers cancel, at the same moment
    replays = [
        subprocess.Popen(
            [sys.executable, "-m", "offers_workers.ops.cli", "dlq", "replay", str(e)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for e in entries
    ]
    for offer_id in ids:
        celery_app.send_task(
            "offers.cancel", kwargs={"offer_id": offer_id, "reason": "buyer_withdrew", "actor": "buyer"}
        )
    for p in replays:
        p.communicate(timeout=120)
        assert p.returncode == 0

    # Then each ends cancelled with exactly one event and one release, and nothing left to replay
    wait_until(lambda: settled_cancelled(runtime, ids), timeout=60, message="cancelled")
    with runtime.db.transaction() as conn:
        releases = Counter(
            r["offer_id"]
            for r in conn.execute(
                "SELECT offer_id FROM audit_events WHERE offer_id = ANY(%s) AND kind = 'hold_released'", (ids,)
            )
        )
        pending = conn.execute(
            "SELECT count(*) AS n FROM dead_letters WHERE offer_id = ANY(%s) AND status = 'pending'", (ids,)
        ).fetchone()["n"]
    assert releases == Counter({offer_id: 1 for offer_id in ids})
    assert pending == 0
    assert holds_by_offer(runtime, ids) == {offer_id: ["canceled"] for offer_id in ids}
    on_bus, on_sns = cancelled_events(bus, ids)
    assert on_bus == Counter({offer_id: 1 for offer_id in ids}) and on_sns == Counter({offer_id: 1 for offer_id in ids})


def test_offers_past_the_makers_sla_are_cancelled_and_their_holds_released(
    celery_app, runtime, offers_env, tmp_path
) -> None:
    # Given a maker who must answer within 3.6 seconds
    maker, listing = f"mkr_sla_{RUN_ID}", f"lst_sla_{RUN_ID}"
    policy = {
        "makers": [{"maker_id": maker, "min_offer_cents": 100, "sla_hours": 0.001}],
        "listings": [
            {
                "listing_id": listing,
                "maker_id": maker,
                "asking_price_cents": 20000,
                "currency": "USD",
                "status": "active",
            }
        ],
    }
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    loaded = cli("policy", "load", str(path))
    assert loaded.returncode == 0, loaded.stderr
    batch = [base_offer(new_id("sla"), n) | {"listing_id": listing, "maker_id": maker} for n in range(3)]
    for offer in batch:
        celery_app.send_task("offers.submit", kwargs={"offer": offer})
    ids = [o["offer_id"] for o in batch]
    wait_until(
        lambda: (
            len(offer_rows(runtime, ids)) == 3
            and {r["state"] for r in offer_rows(runtime, ids).values()} == {states.SUBMITTED}
        ),
        message="submitted",
    )

    # When the beat's SLA job runs every second
    beat = next(t for t in read_procfile() if t.name == "beat")
    with Fleet(offers_env | {"OFFERS_SLA_CHECK_INTERVAL_SECONDS": "1"}, tmp_path / "beat") as fleet:
        fleet.start(beat)
        # Then the offers are cancelled maker_sla_expired and their holds released
        wait_until(lambda: settled_cancelled(runtime, ids), timeout=60, message=f"SLA expiry (logs in {tmp_path})")
    assert {r["reason"] for r in offer_rows(runtime, ids).values()} == {"maker_sla_expired"}
    assert holds_by_offer(runtime, ids) == {offer_id: ["canceled"] for offer_id in ids}


def test_a_cancel_with_bad_arguments_is_recorded_and_refused(celery_app, runtime) -> None:
    offer_id, hostile = new_id("badcancel"), f"x'; DROP TABLE offers; --{RUN_ID}"
    celery_app.send_task(
        "offers.cancel", kwargs={"offer_id": offer_id, "reason": "changed_my_mind", "actor": "buyer", "extra": 1}
    )
    celery_app.send_task("offers.cancel", kwargs={"offer_id": hostile, "reason": "ops", "actor": "ops"})

    def recorded() -> dict[str, dict[str, Any]]:
        with runtime.db.transaction() as conn:
            return {
                r["offer_id"]: r
                for r in conn.execute(
                    "SELECT offer_id, outcome, errors FROM cancel_requests WHERE offer_id = ANY(%s)",
                    ([offer_id, hostile],),
                )
            }

    rows = wait_until(lambda: len(recorded()) == 2 and recorded(), message="both requests recorded")
    assert rows[offer_id]["outcome"] == "invalid" and {e["field"] for e in rows[offer_id]["errors"]} == {
        "reason",
        "extra",
    }
    assert rows[hostile]["outcome"] == "invalid" and {e["field"] for e in rows[hostile]["errors"]} == {"offer_id"}
    with runtime.db.transaction() as conn:
        assert conn.execute("SELECT count(*) AS n FROM offers").fetchone()["n"] > 0  # still there
    # The CLI refuses what is not an offer id; a cancel for an offer nobody submitted is kept as a tombstone
    assert cli("cancel", "--reason", "ops", "--", "x'; DROP TABLE offers").returncode == 2
    never = new_id("never")
    assert cli("cancel", never, "--reason", "ops").returncode == 0
    wait_until(lambda: _outcomes(runtime, never) == ["tombstone"], message="tombstone")


def _outcomes(runtime, offer_id: str) -> list[str]:
    with runtime.db.transaction() as conn:
        return [
            r["outcome"]
            for r in conn.execute("SELECT outcome FROM cancel_requests WHERE offer_id = %s ORDER BY id", (offer_id,))
        ]


def test_spike_detection_fires_on_a_spike_and_not_on_normal_traffic(runtime) -> None:
    def cancelled(prefix: str, count: int, hours_ago: list[float]) -> None:
        """High-value offers cancelled at the given times (back-dated: the watch reads cancelled_at)."""
        for n in range(count):
            offer = base_offer(f"{prefix}-{n:04d}", n) | {"amount_cents": 150_000}
            intake.submit(runtime, offer)
            cancellation.cancel(runtime, offer["offer_id"], "buyer_withdrew", "buyer")
            with runtime.db.transaction() as conn:
                conn.execute(
                    "UPDATE offers SET cancelled_at = clock_timestamp() - make_interval(secs => %s) WHERE offer_id = %s",
                    (hours_ago[n] * 3600, offer["offer_id"]),
                )

    def check(prefix: str) -> reports.SpikeCheck:
        with runtime.db.transaction() as conn:
            return reports.cancellation_spike(
                conn,
                high_value_cents=100_000,
                window_s=3600,
                trailing_s=86400,
                ratio=3.0,
                minimum=5,
                offer_id_prefix=prefix,
            )

    # Normal traffic: five an hour over the last day, six in the last hour
    normal = new_id("normal")
    cancelled(normal, 126, [1 + n / 5 for n in range(120)] + [0.1] * 6)
    assert not check(normal).spike
    # A spike: a quiet day, then twenty in the last hour
    spiky = new_id("spike")
    cancelled(spiky, 44, [1 + n for n in range(24)] + [0.2] * 20)
    found = check(spiky)
    assert found.spike and found.recent == 20 and found.by_reason == {"buyer_withdrew": 20}

    # `health` names the runbook symptom and its first checks, and exits 1
    health = cli("health")
    assert health.returncode == 1, health.stdout
    assert "High-Value Cancellation Spike" in health.stdout and "SLA window" in health.stdout
    stats = cli("stats", "--window", "1h", "--json")
    assert stats.returncode == 0, stats.stderr
    figures = json.loads(stats.stdout)
    assert figures["high_value_cancellations"]["spike"] is True
    bands = {b["band"]: b["offers"] for b in figures["cancellations"]["by_value_band"]}
    assert bands["1,000 – 9,999"] >= 26
