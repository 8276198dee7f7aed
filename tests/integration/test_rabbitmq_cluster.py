"""The fleet on a RabbitMQ cluster of three nodes rides out losing one.

The fleet's broker setting lists the three nodes (``amqp://…c1;amqp://…c2;amqp://…c3``); its
quorum queues are replicated on all three. With offers in flight and cancels mixed in, the node
that leads the stage queues is (a) killed with kill -9, (b) stopped for 30 s, (c) paused (SIGSTOP
of its VM) until the others mark it down. Each time the leaders move to another node, the fleet
fails over along its URL list, every offer reaches its outcome, no buyer is held twice or left
held, and the node rejoins.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress

import pytest

from config.celery import QUEUES
from offers_workers.domain import states
from offers_workers.local.samples import base_offer
from offers_workers.local.stack import load_sample_policy
from offers_workers.store import db
from tests.brokers import own_sandbox
from tests.conftest import RUN_ID, SERVER, _create_database, _drop_database, new_id, offer_rows, wait_until
from tests.drillkit import FAST_RECOVERY, Drill, drill, settings_for
from tests.rabbit_cluster import Cluster, Node, rabbit_cluster, rabbit_cluster_unavailable

#: Offers per drill, and of them cancelled by the buyer at some moment around the fault.
OFFERS, CANCELLED = 60, 16


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if reason := rabbit_cluster_unavailable():
        pytest.skip(reason)
    with rabbit_cluster(tmp_path_factory.mktemp("rabbit-cluster"), RUN_ID[:6]) as running:
        yield running


@pytest.fixture(scope="module")
def fleet(cluster: Cluster, offers_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    """worker, worker_partners and beat on the cluster, with a database and a sandbox of their own
    (results, caches and the beat's lock stay in the run's Redis)."""
    logs = tmp_path_factory.mktemp("cluster-fleet")
    created_url, db_name = _create_database(SERVER["url"], suffix="rmq_cluster")
    try:
        db.migrate(created_url)
        overrides = {
            "OFFERS_DATABASE_URL": created_url,
            "OFFERS_BROKER_URL": cluster.url(),
            "OFFERS_REDIS_URL": offers_env["OFFERS_BROKER_URL"],
            **FAST_RECOVERY,
            # A node that hangs is noticed by heartbeats in seconds (production default 30 s).
            "OFFERS_BROKER_HEARTBEAT_SECONDS": "5",
        }
        with own_sandbox({**offers_env, **overrides}, logs / "sandbox") as (_, env):
            load_sample_policy(settings_for(env))
            # Only what differs from the run's: the drill gives the fleet a Redis key prefix of its own.
            own = {k: v for k, v in env.items() if k.startswith("OFFERS_") and offers_env.get(k) != v}
            with drill("rmq-cluster", offers_env, logs, **own) as d:
                yield d
    finally:
        _drop_database(SERVER["url"], db_name)


def test_quorum_queues_are_replicated_on_all_three_nodes(cluster: Cluster, fleet: Drill) -> None:
    queues = cluster.queues()
    everyone = sorted(n.name for n in cluster.nodes)
    assert {q: sorted(queues[q][1]) for q in QUEUES} == {q: everyone for q in QUEUES}


def test_kill_9_of_the_leading_node(cluster: Cluster, fleet: Drill) -> None:
    def fault(node: Node) -> Callable[[], str]:
        cluster.kill(node)

        def heal() -> str:
            cluster.start(node)  # on its own data directory: it rejoins as itself
            return "restarted"

        return heal

    _drill(cluster, fleet, "rmq cluster: kill -9 leader", "kill -9", fault, seed=91)


def test_leading_node_stopped_for_30_s(cluster: Cluster, fleet: Drill) -> None:
    def fault(node: Node) -> Callable[[], str]:
        cluster.stop(node)
        stopped_at = time.monotonic()

        def heal() -> str:
            # Offers flow meanwhile: the drain runs alongside in the test's thread.
            time.sleep(max(0.0, 30 - (time.monotonic() - stopped_at)))
            cluster.start(node)
            return "started after 30 s"

        return heal

    _drill(cluster, fleet, "rmq cluster: leader stopped 30 s", "rabbitmqctl stop", fault, seed=92, heal_in_thread=True)


def test_leading_node_paused_until_marked_down(cluster: Cluster, fleet: Drill) -> None:
    def fault(node: Node) -> Callable[[], str]:
        cluster.pause(node)
        paused_at = time.monotonic()
        others = [n for n in cluster.nodes if n is not node]
        wait_until(
            lambda: not cluster.sees(others[0], node),
            timeout=60,
            interval=0.5,
            message=f"the cluster to mark {node.name} down",
        )
        marked = time.monotonic() - paused_at

        def heal() -> str:
            cluster.resume(node)
            wait_until(lambda: cluster.sees(others[0], node), timeout=30, interval=0.5, message="the node back")
            # The resumed node never saw itself in a minority, so pause_minority leaves the partition
            # the others recorded: RabbitMQ's recovery is a restart of the node's app.
            with suppress(AssertionError):
                wait_until(lambda: cluster.partitions(others[0]), timeout=10, interval=1)
            if not cluster.partitions(others[0]):
                # On a busy host the partition can be recorded after that wait: a cluster that has not
                # re-formed within 30 s gets the same recovery
                try:
                    cluster.wait_clustered(timeout=30)
                    return f"marked down after {marked:.1f} s, resumed"
                except AssertionError:
                    pass
            cluster.restart_app(node)
            return f"marked down after {marked:.1f} s, resumed, partition healed by restarting its app"

        return heal

    _drill(cluster, fleet, "rmq cluster: leader paused (SIGSTOP)", "SIGSTOP", fault, seed=93)


def _drill(
    cluster: Cluster,
    fleet: Drill,
    name: str,
    what: str,
    fault: Callable[[Node], Callable[[], str]],
    seed: int,
    heal_in_thread: bool = False,
) -> None:
    cluster.wait_clustered()
    d = fleet.scenario(name)
    # Given the node that leads most of the fleet's queues
    before = cluster.leaders(QUEUES)
    leader_name, led = Counter(before.values()).most_common(1)[0]
    leader = cluster.node(leader_name)
    moved_queues = [q for q, n in before.items() if n == leader_name]

    # When offers are in flight, buyers cancel some of theirs, and the leader fails
    samples = d.samples(OFFERS - CANCELLED, seed)
    d.figures["offers"] += CANCELLED
    cancelled = [new_id(f"cl{seed}") for _ in range(CANCELLED)]
    with ExitStack() as stack:
        sender = threading.Thread(target=_offers_and_cancels, args=(d, samples, cancelled, seed))
        sender.start()
        stack.callback(sender.join)
        wait_until(lambda: d.settled_count(samples) >= len(samples) // 4, timeout=90, message="a quarter settled")
        open_at_fault = len(samples) - d.settled_count(samples)
        fault_at = time.monotonic()
        heal = fault(leader)

        # Then the leaders move to the other nodes
        seen: list[object] = []
        try:
            after = wait_until(lambda: _moved(cluster, moved_queues, leader_name, seen), timeout=60, interval=0.5)
        except AssertionError:
            raise AssertionError(f"the leaders did not move from {leader_name}: last seen {seen[-3:]}") from None
        moved_s = time.monotonic() - fault_at
        healed: list[str] = []
        if heal_in_thread:
            healer = threading.Thread(target=lambda: healed.append(heal()))
            healer.start()
            stack.callback(healer.join)
        else:
            healed.append(heal())
        sender.join()

        # And every offer reaches its outcome, the cancelled ones cancelled
        d.drain(samples, timeout=150)
        wait_until(lambda: _all_cancelled(d, cancelled), timeout=60, message="the cancelled offers to settle")
        done_s = time.monotonic() - fault_at

    # And the node rejoins, every queue on three members again
    rejoin_from = time.monotonic()
    cluster.wait_clustered()
    rejoined_s = time.monotonic() - rejoin_from
    members = cluster.queues()
    assert {q: len(members[q][1]) for q in QUEUES} == {q: 3 for q in QUEUES}
    new = Counter(after[q] for q in moved_queues)
    moved_to = ", ".join(f"{cluster.node(n).short}" + (f" ({c})" if len(new) > 1 else "") for n, c in new.items())
    d.figures["faults"] = (
        f"3 nodes; {what} {leader.short} (leader of {led} of {len(QUEUES)} queues) with {open_at_fault} offers open;"
        f" leader moved from {leader.short} to {moved_to} in {moved_s:.1f} s; {healed[0]}, rejoined"
        f" {rejoined_s:.0f} s after; {len(cancelled)} cancels; last offer done {done_s:.1f} s after the fault"
    )
    d.verify(samples, others=cancelled)
    assert open_at_fault > 0


def _offers_and_cancels(d: Drill, samples: list, cancelled: list[str], seed: int) -> None:
    """The drill's offers and, among them, card offers each cancelled 0-6 s after its submit."""
    rng = random.Random(seed)
    timeline = [(rng.uniform(0, 2), "submit", o) for o in cancelled]
    timeline += [(at + rng.uniform(0, 6), "cancel", o) for at, _, o in list(timeline)]
    timeline.sort()
    payloads = {o: base_offer(o, n) for n, o in enumerate(cancelled)}
    d.submit(samples)
    start = time.monotonic()
    for at, kind, offer_id in timeline:
        time.sleep(max(0.0, start + at - time.monotonic()))
        if kind == "submit":
            d.app.send_task("offers.submit", kwargs={"offer": payloads[offer_id]})
        else:
            d.app.send_task(
                "offers.cancel", kwargs={"offer_id": offer_id, "reason": "buyer_withdrew", "actor": "buyer"}
            )


def _moved(cluster: Cluster, queues: list[str], old: str, seen: list[object]) -> dict[str, str] | None:
    try:
        now = cluster.leaders(QUEUES)
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        seen.append(exc)
        return None
    seen.append(now)
    return now if all(now.get(q) not in (None, "", old) for q in queues) else None


def _all_cancelled(d: Drill, ids: list[str]) -> bool:
    rows = offer_rows(d.runtime, ids)
    return len(rows) == len(ids) and all(
        r["state"] == states.CANCELLED and r["hold_status"] != "held" for r in rows.values()
    )
