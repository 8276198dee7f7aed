"""Fault drills: partners flaky or slow, workers killed, Redis flushed, Postgres restarted.

Each drill runs its own fleet (the Procfile's workers and beat) on its own Redis key space, sends a
mix of sample offers while the fault happens, waits for them to drain, then compares every offer
with the outcome it was built for and with the PaymentIntents the Stripe sandbox holds: nothing
lost, no buyer held twice, no hold left on an offer that ended. The figures of each drill are
printed at the end of the run.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from offers_workers import db, states
from offers_workers.demo import send_samples, settled
from offers_workers.embedded import EmbeddedPostgres, EmbeddedRedis
from offers_workers.fleet import Fleet
from offers_workers.runtime import Runtime
from offers_workers.samples import Sample
from offers_workers.sandbox import PARTNERS, clear_faults, get_faults, set_fault
from offers_workers.stack import load_sample_policy
from tests.conftest import RUN_ID
from tests.drillkit import drill, settings_for

#: A sweep that notices lost work within seconds, and a broker that hands a killed worker's
#: messages to another within 30 s (tasks here take well under the 20 s limit), so drills drain
#: in test time.
FAST_RECOVERY = {
    "OFFERS_RECOVERY_INTERVAL_SECONDS": "2",
    "OFFERS_RECOVERY_AFTER_SECONDS": "10",
    "OFFERS_TASK_TIME_LIMIT_SECONDS": "20",
    "OFFERS_BROKER_VISIBILITY_TIMEOUT_SECONDS": "30",
}
#: A sweep that stays out of the way: what recovers the offers is the retries alone.
NO_RECOVERY = {"OFFERS_RECOVERY_AFTER_SECONDS": "3600"}
#: Longer than a task waits for a pooled connection (db.py), so tasks fail and retry.
DB_DOWNTIME_S = 12


@pytest.fixture
def clean_faults(sandbox: Any) -> Iterator[None]:
    yield
    clear_faults(sandbox)


def test_flaky_partners_every_offer_reaches_its_outcome(offers_env, sandbox, clean_faults, tmp_path) -> None:  # noqa: ANN001
    with drill("flaky", offers_env, tmp_path, **NO_RECOVERY) as d:
        # Given every partner answers 30 % of requests with a 503
        for partner in PARTNERS:
            set_fault(sandbox, partner, status=503, rate=0.3)
        # When 200 offers go through
        samples = d.send(200, seed=11)
        d.drain(samples)
        injected = {p: f["injected"] for p, f in get_faults(sandbox).items()}
        clear_faults(sandbox)
        d.figures["faults"] = "30% 503: " + ", ".join(f"{p} {n}" for p, n in injected.items())
        # Then every offer ends as designed, none dead-lettered, one PaymentIntent at most each
        d.verify(samples)
        assert all(n > 0 for n in injected.values()), injected
        assert sum(d.retries_logged().values()) >= sum(injected.values()) * 0.9


def test_a_partner_slower_than_the_timeout_is_retried_and_recovers(offers_env, sandbox, clean_faults, tmp_path) -> None:  # noqa: ANN001
    with drill("slow", offers_env, tmp_path, OFFERS_PARTNER_READ_TIMEOUT="1", **NO_RECOVERY) as d:
        # Given every partner answers after 1.5 s, beyond the 1 s read timeout
        for partner in PARTNERS:
            set_fault(sandbox, partner, latency_ms=1500)
        # When offers go in and the partners stay slow for six seconds
        samples = d.send(60, seed=12)
        time.sleep(6)
        requests_while_slow = sum(f["requests"] for f in get_faults(sandbox).values())
        clear_faults(sandbox)
        d.figures["faults"] = f"1.5 s latency on every partner for 6 s ({requests_while_slow} requests)"
        # Then the timeouts were retried as transient failures and every offer completes
        d.drain(samples)
        d.verify(samples)
        retried = d.retries_logged()
        assert retried["payment"] > 0, retried


def test_killed_workers_lose_nothing_and_hold_no_buyer_twice(offers_env, sandbox, tmp_path) -> None:  # noqa: ANN001
    with drill("kill", offers_env, tmp_path, **FAST_RECOVERY) as d:
        # When workers (pool children and whole worker processes) are killed with SIGKILL,
        # over and over, while 300 offers go through, and restarted as a supervisor would
        samples = d.send(300, seed=13)
        rng = random.Random(RUN_ID)
        kills: Counter[str] = Counter()
        while d.settled_count(samples) < len(samples) and sum(kills.values()) < 12:
            time.sleep(rng.uniform(1.0, 2.0))
            d.restart_dead_workers()
            name, pid = rng.choice(_worker_processes(d.fleet))
            os.kill(pid, signal.SIGKILL)
            kills[name] += 1
        d.figures["faults"] = "kill -9: " + ", ".join(f"{n} x{k}" for n, k in sorted(kills.items()))
        # A killed worker's unacked messages come back after the visibility timeout (30 s here)
        d.drain(samples, timeout=90)
        # Redis has no acknowledgement for the pop itself: a consumer killed at the instant Redis
        # hands it a message loses that message before anything of ours saw it. The upstream's
        # answer is to resend what left no record (intake is idempotent); RabbitMQ closes the gap.
        unrecorded = [s for s in samples if not _intake_done(d.runtime, [s])]
        if unrecorded:
            send_samples(lambda offer: d.app.send_task("offers.submit", kwargs={"offer": offer}), unrecorded)
            d.drain(samples, timeout=60)
        d.figures["faults"] += f"; submits resent by upstream: {len(unrecorded)}"
        # Then every offer reaches its outcome: 0 lost, 0 duplicate holds, 0 orphan holds
        d.verify(samples)
        assert sum(kills.values()) >= 5, kills
        assert len(unrecorded) <= 3, "more than a rare pop lost at the broker"


def _worker_processes(fleet: Fleet) -> list[tuple[str, int]]:
    found = []
    for name, proc in fleet.processes.items():
        if name.startswith("worker") and proc.poll() is None:
            found.append((name, proc.pid))
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            if children.exists():
                found += [(f"{name} pool child", int(pid)) for pid in children.read_text().split()]
    return found


def test_a_flushed_redis_delays_offers_and_the_sweep_completes_them(offers_env, sandbox, tmp_path) -> None:  # noqa: ANN001
    private = EmbeddedRedis(tmp_path / "redis")
    url = private.start()
    try:
        with drill("flush", offers_env, tmp_path / "logs", OFFERS_BROKER_URL=url, **FAST_RECOVERY) as d:
            samples = d.send(150, seed=14)
            # When Redis loses everything (queues, unacked messages, the beat's schedule and lock)
            # once intake has recorded every message and the saga is mid-way
            _wait(lambda: _intake_done(d.runtime, samples), "intake to record every message")
            open_at_flush = _open_offers(d.runtime, samples)
            redis.Redis.from_url(url).flushall()
            d.figures["faults"] = f"FLUSHALL with {open_at_flush} offers mid-saga"
            # Then the recovery sweep finds them in Postgres and every offer completes
            d.drain(samples)
            d.verify(samples)
            assert open_at_flush > 0, "the flush came too late to test anything"
            assert d.figures["swept"] > 0
            assert not d.fleet.dead(), "a process died after the flush"
    finally:
        private.stop()


def test_a_postgres_restart_mid_run_is_ridden_out_by_retries(offers_env, sandbox, tmp_path) -> None:  # noqa: ANN001
    private = EmbeddedPostgres(tmp_path / "pg")
    url = private.start()
    db.migrate(url)
    settings = settings_for({**offers_env, "OFFERS_DATABASE_URL": url})
    load_sample_policy(settings)
    try:
        with drill("pgrestart", offers_env, tmp_path / "logs", OFFERS_DATABASE_URL=url, **NO_RECOVERY) as d:
            samples = d.send(150, seed=15)
            # When Postgres stops (fast shutdown: every connection cut) mid-run, for longer than a
            # task waits for a pooled connection
            _wait(lambda: d.settled_count(samples) >= 10, "the first offers to settle")
            open_at_restart = _open_offers(d.runtime, samples)
            private.restart(downtime_s=DB_DOWNTIME_S)
            d.figures["faults"] = f"Postgres down {DB_DOWNTIME_S} s with {open_at_restart} offers open"
            # Then the stages retry until it is back, and every offer completes
            d.drain(samples)
            d.verify(samples)
            assert d.retries_logged()["intake"] + d.retries_logged()["validation"] > 0
    finally:
        private.stop()


def _wait(predicate, message: str, timeout: float = 120) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {message}"
        time.sleep(0.05)


def _intake_done(rt: Runtime, samples: list[Sample]) -> bool:
    _, offers, rejections = settled(rt, samples)
    return all(
        (s.scenario.state is None or s.offer_id in offers)
        and (s.scenario.intake_rejection is None or s.scenario.intake_rejection in rejections.get(s.offer_id, []))
        for s in samples
    )


def _open_offers(rt: Runtime, samples: list[Sample]) -> int:
    _, offers, _ = settled(rt, samples)
    return sum(1 for row in offers.values() if row["state"] in states.OPEN)
