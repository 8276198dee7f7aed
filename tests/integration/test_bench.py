"""A small run of ``offers-workers bench``: it keeps working. Its figures are not asserted here
(a benchmark is not a timed test); what it reports about offers is."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import SERVER, cli, redis_database

pytestmark = pytest.mark.integration


def test_bench_smoke(stores: dict[str, str], scratch_database: str, tmp_path: Any) -> None:
    # A Redis database of its own: queue names carry no prefix, so the suite's workers (a fleet an
    # earlier test started) would otherwise take the bench's offers into the suite's database.
    with redis_database(SERVER["redis"]) as broker:
        env = {"OFFERS_DATABASE_URL": scratch_database, "OFFERS_BROKER_URL": broker, "OFFERS_STATE_DIR": str(tmp_path)}
        done = cli(
            "bench",
            "--offers",
            "30",
            "--chains",
            "30",
            "--steady-seconds",
            "2",
            "--draft-rps",
            "50",
            "--draft-seconds",
            "1",
            "--memory-offers",
            "0",
            "--warmup-offers",
            "20",
            "--timeout",
            "120",
            "--json",
            env=env,
            timeout=400,
        )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # With --json, stdout is the JSON alone (a script parses it as is); the table is on stderr.
    figures = json.loads(done.stdout)
    assert "bare 5-hop chain, saturated" in done.stderr

    assert figures["problems"] == []
    assert figures["baseline_chains"]["count"] == 30
    for phase in ("saga", "realistic"):
        assert figures[phase]["count"] == 30 and figures[phase]["failed"] == 0, figures[phase]
    assert figures["steady_lag"]["count"] >= 1
    # Latency was injected on every path: no offer can reach the auction faster than its partners.
    assert figures["steady_lag"]["p50_ms"] >= 480
    # Each of its offers is split by stage, and no stage took less than the latency injected on it.
    stages = figures["steady_stage_less_injected"]
    assert list(stages) == ["validation", "payment", "risk", "auction"]
    assert all(p["count"] == figures["steady_lag"]["count"] and p["p50_ms"] >= 0 for p in stages.values()), stages
    # Where each stage's task spent it, from the workers' task events: one task per steady offer and stage.
    tasks = figures["steady_task_times"]
    assert list(tasks) == ["validation", "payment", "risk", "auction"], tasks
    for stage, parts in tasks.items():
        assert list(parts) == ["broker", "pool", "run"]
        assert all(p["count"] == figures["steady_lag"]["count"] for p in parts.values()), (stage, parts)
        assert parts["broker"]["p50_ms"] >= 0 and parts["run"]["p50_ms"] >= 0, (stage, parts)
    # The sandbox timed its own answers in the steady phase: Stripe or Plaid, Sift and both AWS calls per offer.
    answers = figures["steady_sandbox_answer_ms"]
    assert answers["aws"]["count"] == 2 * figures["steady_lag"]["count"], answers
    assert answers["sift"]["count"] == figures["steady_lag"]["count"], answers
    assert 0 < answers["aws"]["p50"] < 250, answers
    assert "broker hop" in done.stderr
    assert figures["fleet_cpu_ms_per_offer"] > 0
    assert figures["validate_draft"]["count"] == 50 and figures["validate_draft_errors"] == 0
    assert figures["duplicate_holds"] == 0
    rss = figures["memory_mb"]
    assert {"worker", "worker_partners"} <= set(rss)
    assert all(end for _, _, end in rss.values())
