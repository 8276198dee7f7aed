"""Postgres failover drill: the fleet on a primary with a synchronous streaming standby, through a
multi-host URL with ``target_session_attrs=read-write``. The primary is killed (kill -9, backends
and all) mid-run, the standby promoted, and the fleet must find it on its own: nothing lost, no
buyer held twice, no hold left behind, the audit chain intact.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from config.celery import QUEUES, ROUTES
from config.links import database_link
from offers_workers.local.samples import base_offer
from offers_workers.local.stack import load_sample_policy
from offers_workers.ops.reports import queue_depths
from offers_workers.store import db
from tests.brokers import own_sandbox
from tests.conftest import RUN_ID, new_id, offer_rows, wait_until
from tests.drillkit import NO_RECOVERY, Drill, drill, settings_for
from tests.integration.test_drills import _partners_take_their_time, _still_open
from tests.pg_standby import ServerNotStarted, StandbyPair, primary_with_standby, standby_unavailable
from tests.races import settled_cancelled

pytestmark = pytest.mark.skipif(standby_unavailable() is not None, reason=str(standby_unavailable()))

#: How long the primary stays dead before the standby is promoted: an operator's (or a
#: failover manager's) reaction time, during which every write fails.
PROMOTE_AFTER_S = 8
#: How soon after the promotion the fleet must write again: its pools try about every second
#: (store/db.py), where psycopg_pool's own backoff left them 7 s late after an 8 s outage.
FOUND_WITHIN_S = 4
#: The beat's jobs: they come every few seconds whatever the drill does.
MAINTENANCE = {name for name, queue in ROUTES.items() if queue == "offers.maintenance"}


@pytest.fixture
def pair() -> Iterator[StandbyPair]:
    """The primary and its standby, or a skip that says why they cannot run here."""
    try:
        servers = primary_with_standby()
        started = servers.__enter__()
    except ServerNotStarted as exc:
        pytest.skip(f"no primary with a standby here: {exc}")
    try:
        yield started
    finally:
        servers.__exit__(None, None, None)


def _audit_rows(url: str) -> int:
    with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
        row = conn.execute("SELECT count(*) FROM audit_events").fetchone()
    return int(row[0]) if row else 0


def _at_rest(d: Drill) -> bool:
    """No offer work waits on the broker, runs, or waits in a worker (reserved, or on a countdown).
    Every offer can have settled while a message retried through the outage (the second delivery of
    a submit, say) has yet to write its audit row: the chain is checked once it has."""
    if any(queue_depths(d.runtime.settings, [q for q in QUEUES if q != "offers.maintenance"]).values()):
        return False
    inspect = d.app.control.inspect(timeout=1.0)
    for replies in (inspect.active(), inspect.reserved(), inspect.scheduled()):
        for tasks in (replies or {}).values():
            if any(task.get("request", task).get("name") not in MAINTENANCE for task in tasks):
                return False
    return True


def test_a_primary_killed_mid_run_fails_over_to_the_synchronous_standby(
    offers_env, pair: StandbyPair, tmp_path: Path
) -> None:
    # Given the fleet's database on a primary with a synchronous standby, reached through both hosts
    url = pair.create_database(f"offers_{RUN_ID}")
    shown = database_link("database", "OFFERS_DATABASE_URL", url).target
    assert shown == f"127.0.0.1:{pair.primary_port}, 127.0.0.1:{pair.standby_port}", shown
    db.migrate(url)
    with own_sandbox({**offers_env, "OFFERS_DATABASE_URL": url}, tmp_path / "sandbox") as (box, env):
        load_sample_policy(settings_for(env))
        with drill("pgfailover", env, tmp_path / "logs", **NO_RECOVERY) as d:
            _partners_take_their_time(box)
            samples = d.samples(100, seed=33)
            # Card offers the buyer withdraws: a third at once, a third just before the fault,
            # a third while no primary takes writes
            cancels = [new_id("failover") for _ in range(15)]
            for n, offer_id in enumerate(cancels):
                d.app.send_task("offers.submit", kwargs={"offer": base_offer(offer_id, 1000 + n)})
            d.figures["offers"] += len(cancels)
            d.submit(samples)

            def cancel(ids: list[str]) -> None:
                for offer_id in ids:
                    d.app.send_task(
                        "offers.cancel",
                        kwargs={"offer_id": offer_id, "reason": "buyer_withdrew", "actor": "buyer"},
                    )

            cancel(cancels[:5])
            # When the primary dies (kill -9) once about a third of the offers have settled
            wait_until(lambda: d.settled_count(samples) >= len(samples) // 3, 120, 0.05, "a third to settle")
            cancel(cancels[5:10])
            open_at_kill = _still_open(d.runtime, samples)
            pair.kill_primary()
            killed = time.monotonic()
            cancel(cancels[10:])
            # and an operator promotes the standby a few seconds later
            time.sleep(PROMOTE_AFTER_S)
            # (a hot standby answers reads: what it holds of the trail before it takes writes)
            standby_url = pair.url(f"offers_{RUN_ID}", port=pair.standby_port)
            rows_before = _audit_rows(standby_url)
            pair.promote()
            promoted = time.monotonic() - killed
            wait_until(lambda: _audit_rows(standby_url) > rows_before, 120, 0.05, "the fleet to write")
            writing = time.monotonic() - killed
            # Then the fleet finds the new primary through its URL and every offer completes
            d.drain(samples)
            wait_until(lambda: settled_cancelled(d.runtime, cancels), 60, 0.25, "the withdrawn offers")
            done = time.monotonic() - killed
            wait_until(lambda: _at_rest(d), 60, 0.25, "the fleet to finish its work")
            d.figures["fault_to_done_s"] = round(done, 1)
            d.figures["faults"] = (
                f"primary killed with {open_at_kill} offers open; standby promoted after {promoted:.1f} s;"
                f" fleet writing again after {writing:.1f} s; last offer done {done:.1f} s after the kill"
            )
            d.verify(samples, others=cancels)
            assert all(r["state"] == "cancelled" for r in offer_rows(d.runtime, cancels).values())
            assert open_at_kill > 0, "the primary died too late to test anything"
            assert writing - promoted < FOUND_WITHIN_S, (
                f"the fleet found the new primary {writing - promoted:.1f} s late"
            )
            assert pair.primary is not None and pair.primary.poll() is not None
