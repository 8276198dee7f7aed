"""Fault drills: partners flaky or slow, Redis flushed, Postgres restarted (workers killed: see
test_brokers.py, which runs that drill on both brokers).

Each drill runs its own fleet (the Procfile's workers and beat) on its own Redis key space, sends a
mix of sample offers while the fault happens, waits for them to drain, then compares every offer
with the outcome it was built for and with the PaymentIntents the Stripe sandbox holds: nothing
lost, no buyer held twice, no hold left on an offer that ended. The figures of each drill are
printed at the end of the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from config.celery import QUEUES
from offers_workers.domain import states
from offers_workers.local.demo import settled
from offers_workers.local.embedded import EmbeddedPostgres, EmbeddedRedis
from offers_workers.local.samples import Sample
from offers_workers.local.sandbox import clear_faults, get_faults, set_fault
from offers_workers.local.stack import load_sample_policy
from offers_workers.ops.reports import queue_depths
from offers_workers.partners.table import SAGA_PARTNERS
from offers_workers.runtime import Runtime
from offers_workers.store import db
from tests.brokers import own_sandbox
from tests.drillkit import FAST_RECOVERY, NO_RECOVERY, drill, intake_done, settings_for

#: Longer than a task waits for a pooled connection (db.py), so tasks fail and retry.
DB_DOWNTIME_S = 12


@pytest.fixture
def partners(offers_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Any, dict[str, str]]]:
    """A sandbox of the drill's own, and the run's environment pointed at it: a drill's faults
    and the moto state of earlier tests stay out of each other's way."""
    with own_sandbox(offers_env, tmp_path / "sandbox") as pair:
        yield pair


@pytest.fixture
def box(partners: tuple[Any, dict[str, str]]) -> Any:
    return partners[0]


@pytest.fixture
def env(partners: tuple[Any, dict[str, str]]) -> dict[str, str]:
    return partners[1]


@pytest.fixture
def clean_faults(box: Any) -> Iterator[None]:
    yield
    clear_faults(box)


@pytest.fixture
def drill_options() -> dict[str, Any]:
    """Keyword arguments of ``drill()`` for these drills (a module running them another way overrides it)."""
    return {}


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[tuple[str, Callable[[float], None]]]:
    """A Postgres of the drill's own, to restart: the fleet's URL for it, and how to restart it."""
    private = EmbeddedPostgres(tmp_path / "pg")
    url = private.start()
    try:
        yield url, private.restart
    finally:
        private.stop()


def test_flaky_partners_every_offer_reaches_its_outcome(env, box, clean_faults, drill_options, tmp_path) -> None:
    with drill("flaky", env, tmp_path, **drill_options, **NO_RECOVERY) as d:
        # Given every partner answers 30 % of requests with a 503
        for partner in SAGA_PARTNERS:
            set_fault(box, partner, status=503, rate=0.3)
        # When 200 offers go through
        samples = d.send(d.sized(200), seed=11)
        d.drain(samples)
        injected = {p: f["injected"] for p, f in get_faults(box).items() if p in SAGA_PARTNERS}
        clear_faults(box)
        d.figures["faults"] = "30% 503: " + ", ".join(f"{p} {n}" for p, n in injected.items())
        # Then every offer ends as designed, none dead-lettered, one PaymentIntent at most each
        d.verify(samples)
        assert all(n > 0 for n in injected.values()), injected
        assert sum(d.retries_logged().values()) >= sum(injected.values()) * 0.9


def test_a_partner_slower_than_the_timeout_is_retried_and_recovers(
    env, box, clean_faults, drill_options, tmp_path
) -> None:
    with drill("slow", env, tmp_path, **drill_options, OFFERS_PARTNER_READ_TIMEOUT="1", **NO_RECOVERY) as d:
        # Given every partner answers after 1.5 s, beyond the 1 s read timeout
        for partner in SAGA_PARTNERS:
            set_fault(box, partner, latency_ms=1500)
        # When offers go in and the partners stay slow for six seconds
        samples = d.send(d.sized(60), seed=12)
        time.sleep(6)
        requests_while_slow = sum(f["requests"] for f in get_faults(box).values())
        clear_faults(box)
        d.figures["faults"] = f"1.5 s latency on every partner for 6 s ({requests_while_slow} requests)"
        # Then the timeouts were retried as transient failures and every offer completes
        d.drain(samples)
        d.verify(samples)
        retried = d.retries_logged()
        assert retried["payment"] > 0, retried


def test_a_flushed_redis_delays_offers_and_the_sweep_completes_them(
    env, box, clean_faults, drill_options, tmp_path
) -> None:
    private = EmbeddedRedis(tmp_path / "redis")
    url = private.start()
    try:
        with drill("flush", env, tmp_path / "logs", **drill_options, OFFERS_BROKER_URL=url, **FAST_RECOVERY) as d:
            _partners_take_their_time(box)
            # Stripe slower than intake, so stage messages wait in Redis behind the partner threads:
            # those a worker already holds outlive the flush in its memory and need no sweep
            # (10 s: worker_partners holds up to 80 messages, 40 running and 40 reserved; on a busy host
            # validation fed it no faster than 2 s or 4 s holds emptied it, and nothing ever waited)
            set_fault(box, "stripe", latency_ms=10_000)
            samples = d.send(150, seed=14)
            # When Redis loses everything (queues, unacked messages, the beat's schedule and lock)
            # once intake has recorded every message and stage messages wait on the broker
            _wait(
                lambda: intake_done(d.runtime, samples) and _stage_messages_waiting(d.runtime) > 0,
                "intake to record every message, with stage messages waiting in Redis",
            )
            waiting = _stage_messages_waiting(d.runtime)
            open_at_flush = _still_open(d.runtime, samples)
            redis.Redis.from_url(url).flushall()
            clear_faults(box)
            d.figures["faults"] = f"FLUSHALL with {open_at_flush} offers mid-saga, {waiting} stage messages waiting"
            # Then the recovery sweep finds them in Postgres and every offer completes
            d.drain(samples)
            d.verify(samples)
            assert open_at_flush > 0, "the flush came too late to test anything"
            assert d.figures["swept"] > 0
            assert not d.fleet.dead(), "a process died after the flush"
    finally:
        private.stop()


def test_a_postgres_restart_mid_run_is_ridden_out_by_retries(
    env, box, clean_faults, private_postgres, drill_options, tmp_path
) -> None:
    url, restart = private_postgres
    db.migrate(url)
    settings = settings_for({**env, "OFFERS_DATABASE_URL": url})
    load_sample_policy(settings)
    with drill("pgrestart", env, tmp_path / "logs", **drill_options, OFFERS_DATABASE_URL=url, **NO_RECOVERY) as d:
        _partners_take_their_time(box)
        samples = d.send(150, seed=15)
        # When Postgres stops (fast shutdown: every connection cut) mid-run, for longer than a
        # task waits for a pooled connection
        _wait(lambda: d.settled_count(samples) >= 10, "the first offers to settle")
        open_at_restart = _still_open(d.runtime, samples)
        restart(DB_DOWNTIME_S)
        clear_faults(box)
        d.figures["faults"] = f"Postgres down {DB_DOWNTIME_S} s with {open_at_restart} offers open"
        # Then the stages retry until it is back, and every offer completes
        d.drain(samples)
        d.verify(samples)
        assert sum(d.retries_logged().values()) > 0


def _partners_take_their_time(box: Any) -> None:
    """Partners answer as production ones do, in a few hundred ms, so the fault meets offers
    mid-saga: with instant answers the saga of 150 offers can end before the fault begins."""
    for partner, ms in {"stripe": 300, "sift": 200, "plaid": 200, "aws": 50}.items():
        set_fault(box, partner, latency_ms=ms)


def _wait(predicate, message: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {message}"
        time.sleep(0.05)


def _stage_messages_waiting(rt: Runtime) -> int:
    """Stage messages on the broker that no worker holds yet (intake, drafts and sweeps aside)."""
    stages = [q for q in QUEUES if q not in ("offers.intake", "offers.realtime", "offers.maintenance")]
    return sum(queue_depths(rt.settings, stages).values())


def _still_open(rt: Runtime, samples: list[Sample]) -> int:
    _, offers, _ = settled(rt, samples)
    return sum(1 for row in offers.values() if row["state"] in states.OPEN)
