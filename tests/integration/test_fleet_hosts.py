"""A fleet of worker hosts that survives losing one.

Three worker hosts, each a network namespace with its own address, run the Procfile's workers for
different queues against the broker, Postgres, Redis and the partners on the main host (which also
runs the single beat). Mid-run one host is cut off (its link set down): every offer completes on
the other two, none lost and no buyer held twice. Then its link comes back: its workers reconnect,
take work again, and nothing they had in hand when the link went is done a second time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from offers_workers.local.fleet import ProcessType
from offers_workers.local.sandbox import clear_faults, set_fault
from tests.brokers import fleet_stores, rabbitmq_unavailable
from tests.conftest import RUN_ID, wait_until
from tests.drillkit import FAST_RECOVERY, Drill, drill, intake_done
from tests.netns import namespaces_unavailable, rehosted, relayed_network

#: Which Procfile worker types each host runs: every queue is served on two hosts, so any one
#: host can go. h1 runs both types and carries the most work in hand when it is cut off.
HOSTS = {"h1": ("worker", "worker_partners"), "h2": ("worker",), "h3": ("worker_partners",)}
CUT = "h1"
NODE = {"worker": "core", "worker_partners": "partners"}
#: Partner latency while the first batch runs, so the host is cut with work in hand.
LATENCY_MS = {"stripe": 200, "sift": 100, "plaid": 100, "aws": 20}


@pytest.fixture
def stores_of_hosts(offers_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """The stores of one fleet (RabbitMQ, the broker for a fleet of hosts, where one is reachable,
    else the run's Redis): its sandbox's URLs and its environment."""
    if reason := namespaces_unavailable(f"offers-{RUN_ID}-probe"):
        pytest.skip(reason)
    broker = "redis" if rabbitmq_unavailable() else "rabbitmq"
    # A silent host is noticed in seconds: the broker by heartbeats, Postgres by the
    # idle-in-transaction timeout, and a wait behind its locks ends in a retry
    # (production defaults: 30 s, 15 s and 10 s).
    with fleet_stores(
        offers_env,
        broker,
        f"hosts_{broker}",
        tmp_path / "sandbox",
        **FAST_RECOVERY,
        OFFERS_BROKER_HEARTBEAT_SECONDS="5",
        OFFERS_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS="5",
        OFFERS_DB_LOCK_TIMEOUT_SECONDS="2",
    ) as (box, env):
        yield env, box


def test_losing_a_worker_host_mid_run_loses_nothing_and_it_rejoins(
    stores_of_hosts: tuple[dict[str, str], Any], tmp_path
) -> None:
    broker_env, sandbox = stores_of_hosts
    broker = "rabbitmq" if broker_env["OFFERS_BROKER_URL"].startswith("amqp") else "redis"
    subnet = f"10.{200 + int(RUN_ID[:2], 16) % 50}.{int(RUN_ID[2:4], 16)}"
    with ExitStack() as stack:
        # Given the main host running the beat, and three worker hosts running workers
        d = stack.enter_context(drill(f"host-loss-{broker}", broker_env, tmp_path, process_types=("beat",)))
        network, relay = stack.enter_context(relayed_network(f"{RUN_ID[:5]}{broker[0]}", subnet, d.env))
        host_env = rehosted(d.env, relay)
        for name, types in HOSTS.items():
            host = network.add_host(name)
            for ptype in types:
                command = f"ip netns exec {host.netns} {d.types[ptype].command}"
                d.fleet.start(
                    ProcessType(f"{name}.{ptype}", command), extra_args=["-n", f"{NODE[ptype]}@{name}"], env=host_env
                )
        nodes = {f"{NODE[t]}@{h}" for h, types in HOSTS.items() for t in types}
        _wait_for_nodes(d, nodes)
        stack.callback(clear_faults, sandbox)
        for partner, ms in LATENCY_MS.items():
            set_fault(sandbox, partner, latency_ms=ms)

        # When 300 offers go through and h1 loses its link once a quarter of them have settled
        samples = d.samples(300, seed=31)
        d.submit(samples)
        wait_until(
            lambda: d.settled_count(samples) >= len(samples) // 4,
            timeout=120,
            message="a quarter of the offers to settle",
        )
        open_at_cut = len(samples) - d.settled_count(samples)
        logs_at_cut = {p: p.stat().st_size for p in _host_logs(d, CUT)}
        network.cut(CUT)
        cut_at, cut_wall = time.monotonic(), time.time()

        # Then every offer completes on h2 and h3 while h1 is still cut off
        d.drain(samples, timeout=90)
        drained_s = time.monotonic() - cut_at
        first_batch_s = d.figures["drain_s"]
        # (Redis only: a pop whose reply was on the cut link is lost before any code of ours saw
        # it; the upstream resends submits that left no record, and the sweep re-sends stages.)
        unrecorded = [s for s in samples if not intake_done(d.runtime, [s])]
        if unrecorded:
            d.submit(unrecorded)
            d.drain(samples, timeout=90)
        assert d.settled_count(samples) == len(samples), "offers did not complete on the remaining hosts"
        clear_faults(sandbox)
        # And h1's workers know they are cut off while they are: a worker that sees it only when the
        # link comes back enforced no time limit and answered nothing in between
        noticed: dict[Path, float | None] = dict.fromkeys(logs_at_cut)

        def all_noticed() -> bool:
            for log, offset in logs_at_cut.items():
                noticed[log] = noticed[log] or _first_logged_since(log, offset, "Connection to broker lost")
            return all(noticed.values())

        wait_until(all_noticed, timeout=90, message=f"{CUT}'s workers to notice they lost the broker")
        noticed_s = max(at for at in noticed.values() if at is not None) - cut_wall

        # When h1's link comes back
        network.restore(CUT)
        cut_off_s = time.monotonic() - cut_at
        restored_at = time.monotonic()
        _wait_for_nodes(d, nodes, timeout=120)
        rejoined_s = time.monotonic() - restored_at
        before = _tasks_done(d, CUT)

        # Then its workers take work again: 60 more offers, spread over all three hosts
        more = d.samples(60, seed=32)
        d.submit(more)
        d.drain(more, timeout=90)
        after = _tasks_done(d, CUT)

        d.figures["faults"] = (
            f"{len(HOSTS)} hosts; {CUT} cut off {cut_off_s:.0f} s with {open_at_cut} offers open;"
            f" all done {drained_s:.1f} s after the cut; {CUT} knew after {noticed_s:.1f} s; rejoined {rejoined_s:.1f} s after the link came back,"
            f" then ran {after - before} tasks; submits resent by upstream: {len(unrecorded)}"
        )
        d.figures["drain_s"] = first_batch_s
        d.verify(samples + more)
        # Nothing was done twice: one transition into each state, and one event row, per offer
        with d.runtime.db.read() as conn:
            twice = conn.execute(
                "SELECT offer_id, to_state, count(*) AS n FROM audit_events WHERE kind = 'transition'"
                " GROUP BY offer_id, to_state HAVING count(*) > 1"
            ).fetchall()
            events_twice = conn.execute(
                "SELECT offer_id, detail_type FROM offer_events GROUP BY offer_id, detail_type HAVING count(*) > 1"
            ).fetchall()
        assert twice == [] and events_twice == []
        assert open_at_cut > 0
        assert after > before, f"{CUT} ran no task after it rejoined"
        assert len(unrecorded) <= (0 if broker == "rabbitmq" else 3), "submits lost at the broker"


def _wait_for_nodes(d: Drill, nodes: set[str], timeout: float = 60) -> None:
    silent = set(nodes)

    def answering() -> bool:
        assert not d.fleet.dead(), f"a process exited; logs in {d.fleet.log_dir}"
        replies = d.app.control.ping(timeout=2.0) or []
        silent.clear()
        silent.update(nodes - {name for reply in replies for name in reply})
        return not silent

    try:
        wait_until(answering, timeout=timeout, message=f"workers {sorted(nodes)} to answer a ping")
    except AssertionError as exc:
        # Which ones stayed silent, where their main thread is and what they logged last: a rejoin
        # that fails names its cause. (Celery's worker logs every thread's stack on SIGUSR1.)
        for node in silent:
            kind, host = node.split("@")
            ptype = next(t for t, n in NODE.items() if n == kind)
            with contextlib.suppress(KeyError, ProcessLookupError):
                os.kill(d.fleet.processes[f"{host}.{ptype}"].pid, signal.SIGUSR1)
        time.sleep(2)
        tails = []
        for node in sorted(silent):
            kind, host = node.split("@")
            ptype = next(t for t, n in NODE.items() if n == kind)
            log = d.fleet.log_dir / f"{host}.{ptype}.log"
            lines = log.read_text(errors="replace").splitlines()[-80:] if log.exists() else ["(no log)"]
            tails.append(f"--- {node} ({log.name}):\n" + "\n".join(line[:300] for line in lines))
        raise AssertionError(f"{exc}; silent: {sorted(silent)}\n" + "\n".join(tails)) from None


def _host_logs(d: Drill, host: str) -> list[Path]:
    return [d.fleet.log_dir / f"{host}.{ptype}.log" for ptype in HOSTS[host]]


def _first_logged_since(log: Path, offset: int, text: str) -> float | None:
    """When the log's first line after ``offset`` holding ``text`` was written (epoch seconds)."""
    with log.open("rb") as f:
        f.seek(offset)
        for line in f.read().decode(errors="replace").splitlines():
            if text in line:
                return datetime.fromisoformat(json.loads(line)["ts"]).timestamp()
    return None


def _tasks_done(d: Drill, host: str) -> int:
    """Tasks the host's workers have run since they started (Celery's own count)."""
    stats = d.app.control.inspect(destination=[f"{NODE[t]}@{host}" for t in HOSTS[host]], timeout=2.0).stats() or {}
    return sum(sum(s.get("total", {}).values()) for s in stats.values())
