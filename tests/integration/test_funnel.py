"""The product funnel through Segment, end to end: the Procfile's workers with a Segment write key,
the sandbox's Segment endpoint recording what they send, and ``stats`` reading the same funnel from
Postgres. Then Segment down: offers end as before, stages as quick, and the unsent events on /metrics.

The module runs one fleet of its own (workers only) on a database of its own, so ``stats`` counts
this module's offers alone.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from offers_workers.domain import states
from offers_workers.local.demo import send_samples, settled
from offers_workers.local.samples import Sample, base_offer
from offers_workers.local.sandbox import clear_faults, forget_batches, funnel_counts, recorded_batches, set_fault
from offers_workers.local.stack import load_sample_policy
from offers_workers.saga import funnel
from offers_workers.store import reports as store_reports
from offers_workers.store.counters import funnel_unsent_key
from tests.conftest import RUN_ID, SERVER, _create_database, _drop_database, cli, wait_until
from tests.drillkit import Drill, drill, settings_for
from tests.monitoring import scrape_once

WRITE_KEY = "wk_sandbox_funnel_0123456789"
#: What `make demo` sends.
DEMO_OFFERS = 200
#: Drafts checked per run: half valid, half under the maker's minimum; and synthetic ones, left out.
DRAFTS, SYNTHETIC = 30, 3
#: Offers cancelled by their buyer once submitted, per run.
CANCELS = 10
#: The delay a synchronous send to a failing Segment would add to a stage at least (one attempt).
FAULT_LATENCY_MS = 400


@pytest.fixture(scope="module")
def fleet_with_funnel(
    offers_env: dict[str, str], sandbox: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Drill]:
    from offers_workers.store import db

    url, name = _create_database(SERVER["url"], suffix="funnel")
    try:
        db.migrate(url)
        load_sample_policy(settings_for({**offers_env, "OFFERS_DATABASE_URL": url}))
        forget_batches(sandbox)
        with drill(
            "funnel",
            offers_env,
            tmp_path_factory.mktemp("funnel-fleet"),
            process_types=("worker", "worker_partners"),
            OFFERS_DATABASE_URL=url,
            OFFERS_SEGMENT_WRITE_KEY=WRITE_KEY,
        ) as running:
            yield running
    finally:
        clear_faults(sandbox, "segment")
        _drop_database(SERVER["url"], name)


def check_drafts(d: Drill, label: str) -> None:
    """DRAFTS drafts through `offers.validate_draft` (half valid), and SYNTHETIC synthetic ones."""
    answers = []
    for n in range(DRAFTS + SYNTHETIC):
        draft = base_offer(f"draft-{label}-{RUN_ID}-{n}", n) | {"amount_cents": 15000 if n % 2 else 500}
        if n >= DRAFTS:
            draft["synthetic"] = True
        answers.append(d.app.send_task("offers.validate_draft", kwargs={"draft": draft}))
    assert [a.get(timeout=30)["valid"] for a in answers[:DRAFTS]] == [bool(n % 2) for n in range(DRAFTS)]


def run(d: Drill, label: str) -> tuple[list[Sample], list[str]]:
    """A demo-sized run (same seed each time, so the same scenarios): drafts, offers, synthetic
    offers, then CANCELS of the submitted offers cancelled. Returns the samples and the cancelled ids."""
    check_drafts(d, label)
    run_d = d.scenario(f"funnel-{label}")
    samples = run_d.samples(DEMO_OFFERS, seed=41)  # the same seed: the same scenarios in the same order
    synthetic = [base_offer(f"synth-{label}-{RUN_ID}-{n}", n) | {"synthetic": True} for n in range(SYNTHETIC)]
    send_samples(lambda offer: d.app.send_task("offers.submit", kwargs={"offer": offer}), samples)
    for offer in synthetic:
        d.app.send_task("offers.submit", kwargs={"offer": offer})
    run_d.drain(samples)
    run_d.verify(samples)  # every offer as designed, no hold lost or doubled, none dead-lettered
    _, offers, _ = settled(d.runtime, samples)
    cancelled = sorted(o for o, row in offers.items() if row["state"] == states.SUBMITTED)[:CANCELS]
    for offer_id in cancelled:
        d.app.send_task("offers.cancel", kwargs={"offer_id": offer_id, "reason": "buyer_withdrew", "actor": "buyer"})
    ids = [o["offer_id"] for o in synthetic] + cancelled

    def done() -> bool:
        found = rows(d, ids)
        return len(found) == len(ids) and all(
            r["state"] == states.CANCELLED if r["offer_id"] in cancelled else r["state"] not in states.OPEN
            for r in found
        )

    wait_until(done, timeout=120, message="the cancels and the synthetic offers")
    return samples, cancelled


def rows(d: Drill, offer_ids: list[str]) -> list[dict[str, Any]]:
    with d.runtime.db.transaction() as conn:
        return conn.execute(
            "SELECT offer_id, state, reason FROM offers WHERE offer_id = ANY(%s)", (offer_ids,)
        ).fetchall()


def stats_funnel(d: Drill) -> dict[str, Any]:
    shown = cli("stats", "--window", "1h", "--json", env=d.env)
    assert shown.returncode == 0, shown.stderr
    figures: dict[str, Any] = json.loads(shown.stdout)["funnel"]
    return figures


def as_events(figures: dict[str, Any]) -> Counter[str]:
    """`stats`' funnel in Segment's event names."""
    return +Counter(
        {
            funnel.DRAFT_VALIDATED: figures["drafts_validated"],
            funnel.SUBMITTED: figures["submitted"],
            funnel.AUCTION_TRIGGERED: figures["auction_triggered"],
            funnel.REJECTED: figures["rejected"],
            funnel.CANCELLED: figures["cancelled"],
        }
    )


def final_states(d: Drill, samples: list[Sample]) -> list[tuple[str, str | None]]:
    by_id = {r["offer_id"]: (r["state"], r["reason"]) for r in rows(d, [s.offer_id for s in samples])}
    return [by_id.get(s.offer_id, ("no offer", None)) for s in samples]


def unsent(d: Drill) -> int:
    counts = d.runtime.required_redis.hgetall(funnel_unsent_key(d.runtime.settings.redis_key_prefix))
    return sum(int(n) for n in counts.values())


@pytest.fixture(scope="module")
def baseline(fleet_with_funnel: Drill, sandbox: Any) -> tuple[list[Sample], list[str]]:
    return run(fleet_with_funnel, "up")


def test_segment_gets_the_funnel_stats_shows(fleet_with_funnel: Drill, sandbox: Any, baseline) -> None:
    d = fleet_with_funnel
    samples, cancelled = baseline
    # Given a demo-sized run with drafts, cancels and synthetic offers, then stats' funnel from Postgres
    figures = stats_funnel(d)
    with_offer = sum(1 for state, _ in final_states(d, samples) if state != "no offer")
    assert (figures["drafts_validated"], figures["drafts_valid"]) == (DRAFTS, DRAFTS // 2)
    assert (figures["submitted"], figures["cancelled"]) == (with_offer, len(cancelled) == CANCELS and CANCELS)
    assert figures["auction_triggered"] > 0 and figures["rejected"] > 0
    # Then Segment got the same counts, event by event (its batches as the sandbox recorded them)
    wait_until(lambda: funnel_counts(sandbox) == as_events(figures), timeout=30, message="Segment's batches")
    print(f"\nstats funnel: {figures}\nSegment got: {dict(funnel_counts(sandbox))}")
    messages = [m for batch in recorded_batches(sandbox) for m in batch]
    rejected = Counter(m["properties"]["reason"] for m in messages if m["event"] == funnel.REJECTED)
    assert rejected == Counter(figures["rejected_by_reason"])
    # And no event carries an email, an IP, a synthetic offer, or the write key
    text = json.dumps(messages)
    assert "@example.com" not in text and "203.0.113" not in text and "synth-" not in text and WRITE_KEY not in text
    assert all(re.fullmatch(r"(usr|risky)_\d+", m["userId"]) for m in messages)  # the buyer ids
    assert {m["properties"]["offer_id"] for m in messages} <= {s.offer_id for s in samples} | {
        f"draft-up-{RUN_ID}-{n}" for n in range(DRAFTS)
    }
    assert unsent(d) == 0
    # Nor does any worker log carry the write key
    for log in d.fleet.log_dir.glob("*.log"):
        assert WRITE_KEY not in log.read_text(errors="replace"), log.name


def test_with_segment_down_offers_end_as_designed_and_the_unsent_count_shows(
    fleet_with_funnel: Drill, sandbox: Any, baseline, tmp_path
) -> None:
    d = fleet_with_funnel
    up_samples, _ = baseline
    before = stats_funnel(d)
    recorded = funnel_counts(sandbox)
    # Given Segment answers 503 to everything, slowly
    set_fault(sandbox, "segment", status=503, latency_ms=FAULT_LATENCY_MS)
    try:
        # When the same run goes through
        down_samples, _ = run(d, "down")
        after = stats_funnel(d)
        expected_unsent = sum((as_events(after) - as_events(before)).values())
        # Then every event of it is counted unsent, once each batch has used its retries
        wait_until(lambda: unsent(d) >= expected_unsent, timeout=90, message="the unsent count")
    finally:
        clear_faults(sandbox, "segment")
    assert unsent(d) == expected_unsent
    assert funnel_counts(sandbox) == recorded  # nothing got through
    # And every offer ended as without the outage (run() verified each against its design)
    assert final_states(d, down_samples) == final_states(d, up_samples)
    # And no stage waited on Segment: each stage's p95 as without it, give or take a loaded machine
    with d.runtime.db.read() as conn:
        up = store_reports.stage_latencies(conn, store_reports.Scope(offer_id_prefix=f"funnel-up-{RUN_ID}"))
        down = store_reports.stage_latencies(conn, store_reports.Scope(offer_id_prefix=f"funnel-down-{RUN_ID}"))
    for stage, timing in down.items():
        baseline_p95 = up[stage].p95 or 0
        assert (timing.p95 or 0) < max(2 * baseline_p95, baseline_p95 + FAULT_LATENCY_MS), (stage, up, down)
    # And /metrics (the metrics process) shows the unsent count
    text = scrape_once(d.env, tmp_path / "metrics")
    served = {
        s.labels["cause"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "offers_funnel_unsent_events"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert sum(served.values()) == expected_unsent and served.get("send_failed") == expected_unsent
