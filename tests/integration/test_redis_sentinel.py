"""The Sentinel drill: the fleet on Redis with Sentinel (a master, one replica, three sentinels) for
every role Redis plays (broker, results, locks, the beat's lock and schedule, counters), and the
master killed mid-run.

Replication is asynchronous: what the master acknowledged but had not yet passed on is gone with
it. Submits that left no record are resent by the upstream (intake is idempotent), stage messages
that vanished are re-sent by the recovery sweep. The promises hold: nothing lost, no buyer held
twice, no hold left behind, the audit chain intact, one beat.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offers_workers.local.demo import send_samples
from offers_workers.local.samples import base_offer
from offers_workers.local.sandbox import clear_faults, set_fault
from offers_workers.redis_client import redis_client
from tests.brokers import own_sandbox
from tests.conftest import new_id, offer_rows, wait_until
from tests.drillkit import FAST_RECOVERY, Drill, drill, intake_done
from tests.races import settled_cancelled
from tests.redis_sentinel import SentinelGroup, redis_sentinel, sentinel_unavailable

#: Partners answer in a few hundred ms, so the kill meets offers mid-saga.
LATENCY_MS = {"stripe": 300, "sift": 200, "plaid": 200, "aws": 50}


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelGroup]:
    if reason := sentinel_unavailable():
        pytest.skip(reason)
    with redis_sentinel(tmp_path / "sentinel") as group:
        yield group


def test_a_killed_redis_master_fails_over_and_the_fleet_keeps_its_promises(
    offers_env: dict[str, str], sentinels: SentinelGroup, tmp_path: Path
) -> None:
    with (
        own_sandbox(offers_env, tmp_path / "sandbox") as (box, env),
        drill(
            "sentinel",
            env,
            tmp_path / "logs",
            OFFERS_BROKER_URL=sentinels.url(),
            OFFERS_REDIS_SENTINEL_MASTER=sentinels.master_name,
            **FAST_RECOVERY,
        ) as d,
    ):
        # A standby beat, as a deployment runs one: it waits for the lock the first beat holds.
        d.fleet.start(d.types["beat"], name="beat-standby")
        for partner, ms in LATENCY_MS.items():
            set_fault(box, partner, latency_ms=ms)
        # Given 100 offers, and 20 card offers their buyers withdraw while the saga runs
        samples = d.samples(100, seed=41)
        withdrawn = {new_id("sentinel-cancel"): n for n in range(20)}
        d.submit(samples[:50])
        _submit_offers(d, withdrawn)
        d.submit(samples[50:])
        _cancel(d, list(withdrawn))

        # When the master is killed (kill -9) once a third of the offers have settled
        wait_until(lambda: d.settled_count(samples) >= len(samples) // 3, timeout=60, message="a third to settle")
        open_at_kill = len(samples) - d.settled_count(samples)
        old_port = sentinels.kill_master()
        killed_at = time.monotonic()
        new_port = sentinels.wait_for_new_master(old_port)
        promoted_s = time.monotonic() - killed_at

        # Then the fleet follows the promoted replica and every offer completes. What the old master
        # acknowledged but never replicated is gone: the sweep re-sends stages (10 s here), the
        # upstream resends submits and cancels that left no record.
        d.drain(samples, timeout=45)
        unrecorded = [s for s in samples if not intake_done(d.runtime, [s])]
        if unrecorded:
            send_samples(lambda offer: d.app.send_task("offers.submit", kwargs={"offer": offer}), unrecorded)
        rows = offer_rows(d.runtime, list(withdrawn))
        unsubmitted = {o: n for o, n in withdrawn.items() if o not in rows}
        _submit_offers(d, unsubmitted)
        uncancelled = [o for o in withdrawn if o not in rows or rows[o]["state"] != "cancelled"]
        _cancel(d, uncancelled)
        d.drain(samples, timeout=60)
        wait_until(
            lambda: settled_cancelled(d.runtime, list(withdrawn)), timeout=60, message="withdrawn offers to cancel"
        )
        done_s = time.monotonic() - killed_at
        clear_faults(box)

        # And one beat kept running on the new master: its lock is there, held by one beat, its
        # sweeps still come, and the standby still waits
        beat = _beat_after(d)
        dead_letters = _dead_letters(d, [s.offer_id for s in samples] + list(withdrawn))
        d.figures["faults"] = (
            f"master killed with {open_at_kill} offers open; replica promoted after {promoted_s:.1f} s;"
            f" all done {done_s:.1f} s after the kill; submits resent by upstream: {len(unrecorded)},"
            f" withdrawals resent: {len(uncancelled)}; dead letters: {dead_letters}"
        )
        d.verify(samples, others=list(withdrawn))
        assert beat["lock_on_new_master"], "the beat's lock is not on the promoted replica"
        assert beat["sweeps_after"] >= 2, f"the beat sent {beat['sweeps_after']} sweeps after the failover"
        assert d.fleet.processes["beat"].poll() is None and d.fleet.processes["beat-standby"].poll() is None
        standby_sent = (d.fleet.log_dir / "beat-standby.log").read_text(errors="replace").count("Sending due task")
        assert standby_sent == 0, f"the standby beat sent {standby_sent} tasks: two beats ran"
        assert not d.fleet.dead(), f"a process died: {d.fleet.dead()}; logs in {d.fleet.log_dir}"
        assert new_port != old_port and open_at_kill > 0
        assert len(unrecorded) <= 5, "more submits lost than asynchronous replication can explain"
        assert dead_letters == 0, "a send that failed while the master was away was dead-lettered, not retried"


def _dead_letters(d: Drill, offer_ids: list[str]) -> int:
    """Dead-letter entries of these offers, their offer dead-lettered or not: a failover must not fill
    the dead-letter queue with stages whose next message could not be sent while the master was away."""
    query = "SELECT count(*) AS n FROM dead_letters WHERE offer_id = ANY(%s)"
    with d.runtime.db.read() as conn:
        return conn.execute(query, (offer_ids,)).fetchone()["n"]


def _submit_offers(d: Drill, offers: dict[str, int]) -> None:
    for offer_id, n in offers.items():
        d.app.send_task("offers.submit", kwargs={"offer": base_offer(offer_id, n)})


def _cancel(d: Drill, offer_ids: list[str]) -> None:
    for offer_id in offer_ids:
        d.app.send_task("offers.cancel", kwargs={"offer_id": offer_id, "reason": "buyer_withdrew", "actor": "buyer"})


def _beat_after(d: Drill) -> dict[str, Any]:
    """Whether the beat's lock is on the current master, and whether the beat still sends recovery
    sweeps (every 2 s here) through it: the sweep's next due time moves on twice."""
    settings = d.runtime.settings
    prefix = f"{settings.redis_key_prefix}redbeat"
    client = redis_client(settings)
    try:
        lock = client.get(f"{prefix}:lock") is not None

        # RedBeat's schedule: each entry scored by when it is next due; a send moves it on.
        def next_sweep() -> float:
            return client.zscore(f"{prefix}:schedule", f"{prefix}recover-stuck-offers") or 0.0

        first, interval = next_sweep(), settings.recovery_interval_seconds
        wait_until(lambda: next_sweep() >= first + 2 * interval, timeout=15, message="the beat's next two sweeps")
        sweeps = round((next_sweep() - first) / interval)
    finally:
        client.close()
    return {"lock_on_new_master": lock, "sweeps_after": sweeps}
