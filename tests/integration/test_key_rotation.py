"""Rotating the fleet's key without a stop, as docs/production.md's *Trust boundary* says: every process restarted
in turn with ``OLD,NEW``, then ``NEW,OLD``, then (the old key's messages gone) ``NEW`` alone, on
Redis and on RabbitMQ, while offers keep coming. Nothing is refused, nothing lost or held twice.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator

import pytest

from config.celery import QUEUES
from offers_workers.ops.reports import queue_depths
from tests.brokers import BROKERS, fleet_stores, rabbitmq_unavailable
from tests.conftest import wait_until
from tests.drillkit import FAST_RECOVERY, Drill, drill

#: Restarted in this order at each step, one at a time: a rolling deploy.
ROLLED = ("worker", "worker_partners", "beat")


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "rabbitmq" and (reason := rabbitmq_unavailable()):
        pytest.skip(reason)
    yield request.param


def roll(d: Drill, keys: str) -> None:
    """Restart each process in turn with ``keys``, as a deploy does: a warm stop, then a start."""
    for name in ROLLED:
        proc = d.fleet.processes[name]
        os.killpg(proc.pid, signal.SIGTERM)  # warm: running tasks finish, unacked messages go back
        proc.wait(60)
        d.fleet.start(d.types[name], env={"OFFERS_MESSAGE_KEYS": keys})
        d.wait_for_workers()


def queued(d: Drill) -> int:
    """Messages waiting in the fleet's queues, as `stats` counts them."""
    return sum(queue_depths(d.runtime.settings, QUEUES).values())


def unauthenticated(d: Drill) -> list[str]:
    with d.runtime.db.read() as conn:
        rows = conn.execute("SELECT errors FROM intake_rejections WHERE reason = 'unauthenticated'")
        return [r["errors"][0]["message"] for r in rows]


def test_offers_keep_flowing_while_the_fleet_key_is_rotated(
    broker: str, offers_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    old, new = f"fleet-old={secrets.token_urlsafe(32)}", f"fleet-new={secrets.token_urlsafe(32)}"
    log_dir = tmp_path_factory.mktemp(f"rotation-{broker}")
    name = f"rotation-{broker}"
    with (
        fleet_stores(offers_env, broker, name, log_dir, **FAST_RECOVERY, OFFERS_MESSAGE_KEYS=old) as (_, env),
        drill(name, env, log_dir) as fleet,
    ):
        d = fleet.scenario(f"key rotation [{broker}]")
        samples = d.samples(60, seed=31)
        wave = len(samples) // 3
        # While offers come in, every process moves to OLD,NEW (old signs), then NEW,OLD (new signs)
        d.submit(samples[:wave])
        roll(d, f"{old},{new}")
        d.submit(samples[wave : 2 * wave])
        roll(d, f"{new},{old}")
        # Then, once what the old key signed has gone through, every process keeps NEW alone
        d.drain(samples[: 2 * wave], timeout=120)
        wait_until(lambda: queued(d) == 0, timeout=60, message="the queues empty of the old key's messages")
        d.submit(samples[2 * wave :])
        roll(d, new)
        d.drain(samples, timeout=120)
        d.figures["faults"] = "fleet key rotated: 3 rolling restarts of worker, worker_partners and beat"
        # Every offer reaches its outcome: 0 lost, 0 duplicate holds, 0 orphan holds, and none refused
        d.verify(samples)
        time.sleep(1)  # a refusal is recorded a moment after its message arrives
        assert unauthenticated(d) == []
