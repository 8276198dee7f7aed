"""The core scenarios on both brokers: every outcome path with duplicate deliveries, killed
workers, a partner outage and its dead-letter replay, cancellations racing the saga, and a poison
message that kills every worker it reaches.

Each broker gets a fleet of its own (the Procfile's workers and beat), a database of its own and
its own key space: a Redis key prefix, or a RabbitMQ virtual host. On a machine without RabbitMQ
the RabbitMQ half is skipped, with the reason.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from config.celery import QUEUES
from offers_workers.domain import states
from offers_workers.local.demo import send_samples
from offers_workers.local.samples import SCENARIOS, base_offer
from offers_workers.store import dead_letters
from tests.brokers import BROKERS, fleet_stores, queue_policies, rabbitmq_unavailable
from tests.bus import BusReader
from tests.conftest import DRILL_RESULTS, RUN_ID, cli, offer_rows, wait_until
from tests.drillkit import FAST_RECOVERY, Drill, drill, intake_done, worker_processes
from tests.outages import all_in, through_sift_outage
from tests.races import cancel_race

#: The start of the poison drill's offer id, the fleets' failpoint: its tasks kill their worker.
POISON_PILL = "poison-pill-"


@pytest.fixture(scope="module", params=BROKERS)
def fleet_on(
    request: pytest.FixtureRequest, offers_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Drill]:
    """The Procfile's fleet on one broker, with a database and a sandbox of its own."""
    broker = request.param
    if broker == "rabbitmq" and (reason := rabbitmq_unavailable()):
        pytest.skip(reason)
    with scenario_fleet(offers_env, broker, tmp_path_factory.mktemp(f"fleet-{broker}")) as d:
        yield d


@contextmanager
def scenario_fleet(
    offers_env: dict[str, str],
    broker: str,
    log_dir: Path,
    *,
    name: str = "",
    database_via: Callable[[str], str] | None = None,
    label: str = "",
    scale: float = 1.0,
) -> Iterator[Drill]:
    """The fleet these scenarios run on: its stores named ``name`` (the broker's by default), its
    database reached through ``database_via`` (``fleet_stores``); ``label`` and ``scale`` as
    ``Drill`` has them."""
    name = name or broker
    # Armed for the poison drill's own offer only: no other offer id starts with it.
    poison = {"OFFERS_FAILPOINTS": f"crash_on_offer:{POISON_PILL}"}
    with (
        fleet_stores(offers_env, broker, name, log_dir, database_via=database_via, **FAST_RECOVERY, **poison) as (
            box,
            env,
        ),
        drill(name, env, log_dir, label=label, scale=scale) as d,
    ):
        d.sandbox = box
        yield d


def broker_of(d: Drill) -> str:
    return "rabbitmq" if d.env["OFFERS_BROKER_URL"].startswith("amqp") else "redis"


def test_every_outcome_path_with_duplicate_deliveries(fleet_on: Drill) -> None:
    d = fleet_on.scenario(f"outcomes [{broker_of(fleet_on)}]")
    # Given four samples of every scenario (at the fleet's scale), every duplicate delivered a second
    # time (send_samples)
    samples = d.send(d.sized(4) * len(SCENARIOS), seed=21)
    assert {s.scenario.name for s in samples} == {s.name for s in SCENARIOS}
    d.drain(samples, timeout=120)
    d.figures["faults"] = f"{sum(len(s.messages) for s in samples)} messages, {len(SCENARIOS)} scenarios"
    # Then each ends as built, with one hold at most and nothing dead-lettered (asserted in verify)
    d.verify(samples)


def test_killed_workers_lose_nothing_and_hold_no_buyer_twice(fleet_on: Drill) -> None:
    broker = broker_of(fleet_on)
    d = fleet_on.scenario(f"kill [{broker}]")
    # When workers (pool children and whole worker processes) are killed with SIGKILL, ten times,
    # each while a wave of 30 offers (at the fleet's scale) goes through, and restarted as a supervisor would
    wave_size = d.sized(30)
    samples = d.samples(10 * wave_size, seed=13)
    rng = random.Random(RUN_ID)
    kills: Counter[str] = Counter()
    for wave in range(10):
        d.submit(samples[wave * wave_size : (wave + 1) * wave_size])
        time.sleep(rng.uniform(0.5, 1.5))
        d.restart_dead_workers()
        name, pid = rng.choice(worker_processes(d.fleet))
        os.kill(pid, signal.SIGKILL)
        kills[name] += 1
    d.figures["faults"] = "kill -9: " + ", ".join(f"{n} x{k}" for n, k in sorted(kills.items()))
    # RabbitMQ returns a dead worker's unacked messages when its connection drops; Redis after
    # the visibility timeout (25 s here), and the sweep re-sends stages 10 s later: a submit
    # still unrecorded after 40 s was lost at the broker
    d.drain(samples, timeout=40)
    # Redis has no acknowledgement for the pop itself: a consumer killed at the instant Redis
    # hands it a message loses that message before anything of ours saw it. The upstream's
    # answer is to resend what left no record (intake is idempotent). RabbitMQ has no such gap.
    unrecorded = [s for s in samples if not intake_done(d.runtime, [s])]
    if unrecorded:
        send_samples(lambda offer: d.app.send_task("offers.submit", kwargs={"offer": offer}), unrecorded)
        d.drain(samples, timeout=60)
    d.figures["faults"] += f"; submits resent by upstream: {len(unrecorded)}"
    # Then every offer reaches its outcome: 0 lost, 0 duplicate holds, 0 orphan holds
    d.verify(samples)
    assert len(unrecorded) <= (0 if broker == "rabbitmq" else 3), "submits lost at the broker"


def test_a_partner_outage_dead_letters_and_a_replay_submits_each_offer_once(fleet_on: Drill) -> None:
    d = fleet_on.scenario(f"outage [{broker_of(fleet_on)}]")
    started = time.monotonic()
    # Given Sift answered 503 to everything: every offer ends dead-lettered at the risk stage
    ids = through_sift_outage(d.app, d.runtime, d.sandbox, "outage", d.sized(40))
    dead_lettered_after = time.monotonic() - started
    assert {r["hold_status"] for r in offer_rows(d.runtime, ids).values()} == {"held"}
    # When the operator replays the risk queue from the CLI, on this fleet's broker
    listed = cli("dlq", "list", "--stage", "risk", "--json", env=d.env)
    assert listed.returncode == 0, listed.stderr
    assert {e["offer_id"] for e in json.loads(listed.stdout)} == set(ids)
    replay = cli("dlq", "replay", "--all", "--stage", "risk", env=d.env)
    assert replay.returncode == 0, replay.stderr
    assert f"replayed {len(ids)} of" in replay.stdout
    # Then every offer is submitted, with exactly one PaymentIntent each
    wait_until(lambda: all_in(d.runtime, ids, states.SUBMITTED), timeout=60, message="replayed offers to be submitted")
    holds: dict[str, list[str]] = {}
    for pi in d.runtime.stripe.list_holds():
        if pi.offer_id in ids:
            holds.setdefault(pi.offer_id, []).append(pi.status)
    assert holds == {offer_id: ["requires_capture"] for offer_id in ids}
    DRILL_RESULTS.append(
        {
            "drill": d.name,
            "offers": len(ids),
            "lost": 0,
            "duplicate_holds": 0,
            "orphan_holds": 0,
            "faults": f"Sift 503 on every request; all dead-lettered in {dead_lettered_after:.1f} s, replayed from the CLI",
            "dead_lettered": f"{len(ids)} then 0",
            "retries": sum(d.retries_logged().values()),
            "drain_s": round(time.monotonic() - started, 1),
        }
    )


def test_cancellations_racing_the_saga_end_cancelled_once(fleet_on: Drill) -> None:
    d = fleet_on.scenario(f"cancel race [{broker_of(fleet_on)}]")
    bus = BusReader(d.runtime.settings)
    figures = cancel_race(d.app, d.runtime, bus, 120, seed=f"{RUN_ID}-{d.name}")
    DRILL_RESULTS.append({"drill": d.name, **figures})


def test_a_poison_message_ends_in_our_dead_letter_queue(fleet_on: Drill) -> None:
    broker = broker_of(fleet_on)
    d = fleet_on.scenario(f"poison [{broker}]")
    limit = d.runtime.settings.poison_deliveries
    # Given a submit that kills the worker running it, every time, sent among 40 normal offers (at the
    # fleet's scale)
    samples = d.samples(d.sized(40), seed=31)
    poison = base_offer(f"{POISON_PILL}{RUN_ID}", 0)
    d.submit(samples[: len(samples) // 2])
    d.app.send_task("offers.submit", kwargs={"offer": poison})
    d.submit(samples[len(samples) // 2 :])
    # Then every other offer reaches its outcome (0 lost, 0 duplicate holds, 0 orphan holds: verify)
    d.drain(samples, timeout=90)
    # And the poison's worker dies on each of its first deliveries; the next one is dead-lettered, not run
    entry = wait_until(
        lambda: intake_dead_letter(d, poison["offer_id"]), timeout=90, message="the poison's dead letter"
    )
    dead_lettered_after = time.monotonic() - d.started
    # The operator sees it in `dlq list`, with the payload and the history of its deliveries in `dlq show`
    listed = cli("dlq", "list", "--stage", "intake", "--json", env=d.env)
    assert listed.returncode == 0, listed.stderr
    assert [e["id"] for e in json.loads(listed.stdout) if e["offer_id"] == poison["offer_id"]] == [entry.id]
    shown = cli("dlq", "show", str(entry.id), "--json", env=d.env)
    assert shown.returncode == 0, shown.stderr
    found = json.loads(shown.stdout)
    assert (found["error_type"], found["attempts"], found["kwargs"]) == ("PoisonMessage", limit, {"offer": poison})
    assert found["error_message"] == f"delivered {limit} times, the worker died each time; not run again"
    history = found["traceback"].splitlines()
    assert sum("; the worker died" in line for line in history) == limit
    assert history[limit].startswith(f"delivery {limit + 1}: ") and history[limit].endswith("not run, dead-lettered")
    if broker == "rabbitmq":
        assert any(line.startswith("RabbitMQ's x-delivery-count: ") for line in history), history
        # RabbitMQ's own limit, the backstop, is the operations guide's policy on every queue of ours
        assert set(queue_policies(d.env["OFFERS_BROKER_URL"]).items()) >= {(q, "offers-delivery-limit") for q in QUEUES}
    crashes = len(d.logged("failpoint crash_on_offer: the worker exits now"))
    d.figures["offers"] += 1
    d.figures["faults"] = (
        f"1 submit among {len(samples)} kills its worker: {crashes} deaths, dead-lettered"
        f" on delivery {limit + 1} after {dead_lettered_after:.1f} s"
    )
    d.verify(samples)
    assert crashes == limit


def intake_dead_letter(d: Drill, offer_id: str) -> dead_letters.Entry | None:
    with d.runtime.db.read() as conn:
        return next((e for e in dead_letters.entries(conn, stage="intake") if e.offer_id == offer_id), None)


def test_stats_reads_the_queue_depths_from_the_broker(fleet_on: Drill) -> None:
    # Given no worker consumes offers.maintenance for a moment, and five sweeps wait in it
    replies = fleet_on.app.control.cancel_consumer("offers.maintenance", reply=True, timeout=2.0)
    assert replies, "no worker answered"
    try:
        # as the beat sends them: signed, with no argument (the threshold is the setting's)
        for _ in range(5):
            fleet_on.app.send_task("offers.recover")
        # Then `stats` counts them on this fleet's broker, and every other queue too
        found = json.loads(cli("stats", "--json", env=fleet_on.env).stdout)["queue_depths"]
        assert set(found) == set(QUEUES)
        assert found["offers.maintenance"] >= 5
    finally:
        fleet_on.app.control.add_consumer("offers.maintenance", reply=True, timeout=2.0)
