"""The synthetic journey out of the box: on a fleet whose policy has none of the sample listings it
brings its own maker and listing, and a step that cannot succeed fails at once with the reason.

The module runs one fleet of its own (workers only, no beat) on a database of its own, loaded with
a small policy unrelated to the sample one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from offers_workers.domain import states
from offers_workers.local.samples import base_offer
from offers_workers.ops import synthetic
from offers_workers.runtime import Runtime
from tests.conftest import SERVER, _create_database, _drop_database, cli, new_id, redis_database, wait_until
from tests.drillkit import Drill, drill, settings_for
from tests.expected import SYNTHETIC_STEPS

#: A deployment's own policy: none of the sample makers or listings.
POLICY = """\
makers:
  - {maker_id: mkr_pottery, display_name: Real pottery, min_offer_cents: 1000, auto_reject_below_pct: 50}
listings:
  - {listing_id: lst_pottery_jug, maker_id: mkr_pottery, title: Jug, asking_price_cents: 15000, currency: USD}
"""

#: SOFT_LAUNCH_MODE admits only this maker, when switched on.
ALLOW_LISTED = "mkr_pottery"
#: Well under the 60 s a step may wait: what "at once" means here (process start-up included).
AT_ONCE_S = 15


@pytest.fixture(scope="module")
def probe(offers_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    """Workers on a database of their own, with POLICY loaded and no sample policy."""
    from offers_workers.store import db

    url, name = _create_database(SERVER["url"], suffix="synthetic")
    try:
        db.migrate(url)
        log_dir = tmp_path_factory.mktemp("synthetic-fleet")
        with drill(
            "synthetic",
            offers_env,
            log_dir,
            process_types=("worker", "worker_partners"),
            OFFERS_DATABASE_URL=url,
            OFFERS_SOFT_LAUNCH_MAKERS=ALLOW_LISTED,
        ) as running:
            policy = log_dir / "policy.yaml"
            policy.write_text(POLICY)
            loaded = cli("policy", "load", str(policy), env=running.env)
            assert loaded.returncode == 0, loaded.stderr
            yield running
    finally:
        _drop_database(SERVER["url"], name)


def run_journey(probe: Drill, *args: str, **env: str) -> tuple[Any, float]:
    """`synthetic run ARGS` against the probe fleet; returns the finished process and its seconds."""
    started = time.monotonic()
    ran = cli("synthetic", "run", *args, env={**probe.env, **env})
    return ran, time.monotonic() - started


def rows(probe: Drill, sql: str, *params: Any) -> list[dict[str, Any]]:
    with probe.runtime.db.transaction() as conn:
        return conn.execute(sql, params or None).fetchall()


def set_flag(probe: Drill, name: str, value: str) -> None:
    assert cli("flags", "set", name, value, env=probe.env).returncode == 0
    time.sleep(probe.runtime.settings.flag_cache_seconds + 0.5)  # the workers' cache of the flags


def test_synthetic_run_passes_on_a_fleet_whose_policy_has_none_of_the_sample_listings(probe) -> None:
    assert rows(probe, "SELECT listing_id FROM listings WHERE NOT synthetic") == [{"listing_id": "lst_pottery_jug"}]
    ran, _ = run_journey(probe, "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    journey = json.loads(ran.stdout)
    assert [s["name"] for s in journey["steps"]] == SYNTHETIC_STEPS
    assert all(s["ok"] for s in journey["steps"]), journey
    [offer] = rows(
        probe, "SELECT listing_id, maker_id, state, synthetic FROM offers WHERE offer_id = %s", journey["offer_id"]
    )
    assert offer == {
        "listing_id": "lst_synthetic",
        "maker_id": "mkr_synthetic",
        "state": states.CANCELLED,
        "synthetic": True,
    }


def test_the_maker_and_listing_are_made_once_marked_synthetic_and_left_out_of_stats(probe, tmp_path: Path) -> None:
    # Two journeys (more, if the test above ran first) and a policy load between them
    first, _ = run_journey(probe)
    assert first.returncode == 0, first.stdout + first.stderr
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    assert cli("policy", "load", str(policy), env=probe.env).returncode == 0
    second, _ = run_journey(probe)
    assert second.returncode == 0, second.stdout + second.stderr

    # One synthetic maker and listing, made once, as the journey needs them; the real ones untouched
    assert rows(
        probe,
        "SELECT maker_id, min_offer_cents, synthetic FROM makers"
        " WHERE maker_id IN ('mkr_pottery', 'mkr_synthetic') ORDER BY maker_id",
    ) == [
        {"maker_id": "mkr_pottery", "min_offer_cents": 1000, "synthetic": False},
        {"maker_id": "mkr_synthetic", "min_offer_cents": 1, "synthetic": True},
    ]
    assert rows(
        probe,
        "SELECT listing_id, maker_id, asking_price_cents, currency, status, synthetic FROM listings"
        " WHERE listing_id IN ('lst_pottery_jug', 'lst_synthetic') ORDER BY listing_id",
    ) == [
        {
            "listing_id": "lst_pottery_jug",
            "maker_id": "mkr_pottery",
            "asking_price_cents": 15000,
            "currency": "USD",
            "status": "active",
            "synthetic": False,
        },
        {
            "listing_id": "lst_synthetic",
            "maker_id": "mkr_synthetic",
            "asking_price_cents": 15000,
            "currency": "USD",
            "status": "active",
            "synthetic": True,
        },
    ]
    made = rows(
        probe,
        "SELECT data FROM audit_events WHERE kind = 'synthetic_policy_ensured' AND data->>'listing_id' = 'lst_synthetic'",
    )
    assert [(m["data"]["maker_changed"], m["data"]["listing_changed"]) for m in made] == [(True, True)]

    # stats on that database counts no synthetic offer (there is no other)
    synthetic = rows(probe, "SELECT count(*) AS n FROM offers WHERE synthetic")[0]["n"]
    assert synthetic >= 2
    shown = cli("stats", "--json", env=probe.env)
    assert shown.returncode == 0, shown.stderr
    figures = json.loads(shown.stdout)
    assert figures["offers_by_state"] == [] and figures["success_rate"] is None
    assert figures["cancellations"]["by_reason"] == [] and figures["high_value_cancellations"]["recent"] == 0


def test_a_step_that_cannot_succeed_fails_at_once_naming_the_reason(probe) -> None:
    set_flag(probe, "OFFER_SUBMISSION_ENABLED", "off")
    try:
        ran, took = run_journey(probe)
    finally:
        set_flag(probe, "OFFER_SUBMISSION_ENABLED", "on")
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert took < AT_ONCE_S, f"took {took:.1f} s"
    assert "submission_disabled" in ran.stdout and "FAIL" in ran.stdout


def test_no_worker_consuming_intake_fails_at_once(probe) -> None:
    # A CLI pointed at a broker (a Redis database) no worker listens on: nothing would ever take its offer
    with redis_database(SERVER["redis"]) as nobody:
        ran, took = run_journey(probe, "--json", OFFERS_BROKER_URL=nobody)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert took < AT_ONCE_S, f"took {took:.1f} s"
    journey = json.loads(ran.stdout)
    [step] = journey["steps"]
    assert step["name"] == "submitted" and not step["ok"] and "no worker consumes offers.intake" in step["detail"]
    assert rows(probe, "SELECT offer_id FROM offers WHERE offer_id = %s", journey["offer_id"]) == []  # nothing was sent


def test_a_listing_of_another_maker_fails_at_once_naming_both_and_is_left_alone(probe) -> None:
    before = rows(probe, "SELECT * FROM listings WHERE listing_id = 'lst_pottery_jug'")
    ran, took = run_journey(
        probe, OFFERS_SYNTHETIC_LISTING_ID="lst_pottery_jug", OFFERS_SYNTHETIC_MAKER_ID="mkr_someone"
    )
    assert ran.returncode == 1 and took < AT_ONCE_S, ran.stdout + ran.stderr
    assert all(name in ran.stdout for name in ("lst_pottery_jug", "mkr_pottery", "mkr_someone")), ran.stdout
    assert rows(probe, "SELECT maker_id FROM makers WHERE maker_id = 'mkr_someone'") == []  # nothing half made

    # Pointed at a real listing and its maker on purpose, the journey uses them as they are
    ran, _ = run_journey(probe, OFFERS_SYNTHETIC_LISTING_ID="lst_pottery_jug", OFFERS_SYNTHETIC_MAKER_ID="mkr_pottery")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert rows(probe, "SELECT * FROM listings WHERE listing_id = 'lst_pottery_jug'") == before
    assert rows(probe, "SELECT synthetic, min_offer_cents FROM makers WHERE maker_id = 'mkr_pottery'") == [
        {"synthetic": False, "min_offer_cents": 1000}
    ]


def test_soft_launch_admits_the_synthetic_maker_and_no_one_else_off_the_list(probe) -> None:
    set_flag(probe, "SOFT_LAUNCH_MODE", "on")
    try:
        ran, _ = run_journey(probe, "--json")
        # An offer of a maker off the allow-list, even one marked synthetic, is still refused
        outsiders = [base_offer(new_id("outsider"), 1), base_offer(new_id("outsider"), 2) | {"synthetic": True}]
        for offer in outsiders:
            probe.app.send_task("offers.submit", kwargs={"offer": offer})
        ids = [o["offer_id"] for o in outsiders]
        refused = wait_until(
            lambda: (
                len(found := rows(probe, "SELECT reason FROM intake_rejections WHERE offer_id = ANY(%s)", ids)) == 2
                and found
            ),
            timeout=30,
            message="the outsiders to be refused",
        )
    finally:
        set_flag(probe, "SOFT_LAUNCH_MODE", "off")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert all(s["ok"] for s in json.loads(ran.stdout)["steps"])
    assert [r["reason"] for r in refused] == ["submission_disabled"] * 2


def test_journeys_at_once_make_the_maker_and_listing_once(probe) -> None:
    env = {
        **probe.env,
        "OFFERS_SYNTHETIC_MAKER_ID": "mkr_synthetic_race",
        "OFFERS_SYNTHETIC_LISTING_ID": "lst_synthetic_race",
    }
    runtimes = [Runtime(settings_for(env)) for _ in range(8)]
    barrier = threading.Barrier(len(runtimes))

    def ensure(rt: Runtime) -> None:
        with rt.db.transaction() as conn:  # connected before the start line
            conn.execute("SELECT 1")
        barrier.wait()
        synthetic.ensure_policy(rt)

    try:
        with ThreadPoolExecutor(len(runtimes)) as pool:
            list(pool.map(ensure, runtimes))  # raises what any of them raised
    finally:
        for rt in runtimes:
            rt.close()
    assert rows(probe, "SELECT synthetic FROM makers WHERE maker_id = 'mkr_synthetic_race'") == [{"synthetic": True}]
    assert rows(probe, "SELECT maker_id, synthetic FROM listings WHERE listing_id = 'lst_synthetic_race'") == [
        {"maker_id": "mkr_synthetic_race", "synthetic": True}
    ]
    made = rows(
        probe,
        "SELECT 1 FROM audit_events WHERE kind = 'synthetic_policy_ensured' AND data->>'listing_id' = 'lst_synthetic_race'",
    )
    assert len(made) == 1


def test_a_changed_setting_reaches_the_synthetic_listing_and_the_workers_at_once(probe) -> None:
    # Given the workers have the synthetic listing cached, priced in USD
    ran, _ = run_journey(probe)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    try:
        # When the journey is set to another currency and amount, the listing follows, and the
        # workers see it at once (a stale cache entry would reject the offer currency_mismatch)
        ran, _ = run_journey(probe, "--json", OFFERS_SYNTHETIC_CURRENCY="EUR", OFFERS_SYNTHETIC_AMOUNT_CENTS="9900")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert rows(probe, "SELECT currency, asking_price_cents FROM listings WHERE listing_id = 'lst_synthetic'") == [
            {"currency": "EUR", "asking_price_cents": 9900}
        ]
    finally:
        back, _ = run_journey(probe)
    assert back.returncode == 0, back.stdout + back.stderr
