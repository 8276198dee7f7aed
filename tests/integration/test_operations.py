"""What on-call uses: `stats`, `health`, `/metrics`, and the single beat."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from datetime import datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from offers_workers.domain import states
from offers_workers.local.fleet import Fleet, read_procfile
from tests import monitoring
from tests.conftest import cli, wait_until
from tests.expected import SYNTHETIC_STEPS
from tests.outages import through_sift_outage

pytestmark = pytest.mark.usefixtures("fleet")


@pytest.fixture(scope="module")
def outage(celery_app, runtime, sandbox) -> tuple[list[str], float]:
    """Offers dead-lettered at the risk stage while Sift answered 503 to everything, and when the
    outage began (monotonic)."""
    began = time.monotonic()
    return through_sift_outage(celery_app, runtime, sandbox, "ops", 5), began


@pytest.fixture(scope="module")
def dead_lettered(outage: tuple[list[str], float]) -> list[str]:
    return outage[0]


def test_health_breaches_under_a_sift_outage_and_names_the_symptom(outage) -> None:
    # On-call looks at the outage's own window: the session's database also holds the offers of
    # earlier test files, enough of them, finished a minute before, to dilute a fixed window's rate.
    window = math.ceil(time.monotonic() - outage[1]) + 2
    health = cli("health", "--window", f"{window}s")
    assert health.returncode == 1, health.stdout
    assert "Runbook symptom: Submission Success Rate Drops" in health.stdout
    assert "Runbook symptom: Dead letters waiting" in health.stdout and "risk: " in health.stdout
    assert "sift_error" in health.stdout  # the first check says where to look


def test_stats_figures_equal_counts_taken_directly(runtime, dead_lettered) -> None:
    shown = cli("stats", "--window", "1h", "--json")
    assert shown.returncode == 0, shown.stderr
    figures = json.loads(shown.stdout)
    with runtime.db.transaction() as conn:
        direct = Counter(
            {
                (r["state"], r["reason"]): r["n"]
                for r in conn.execute(
                    "SELECT state, reason, count(*) AS n FROM offers WHERE NOT synthetic AND received_at >= now() - interval '1 hour'"
                    " GROUP BY state, reason"
                )
            }
        )
        dlq = {
            r["stage"]: r["n"]
            for r in conn.execute(
                "SELECT stage, count(*) AS n FROM dead_letters WHERE status = 'pending' GROUP BY stage"
            )
        }
        holds = conn.execute("SELECT count(*) AS n FROM offers WHERE hold_status = 'held'").fetchone()["n"]
        timed = conn.execute(
            "SELECT count(validated_at) AS validated, count(auction_triggered_at) AS triggered,"
            " percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM validated_at - received_at) * 1000) AS validation_p95"
            " FROM offers WHERE NOT synthetic AND received_at >= now() - interval '1 hour'"
        ).fetchone()
    assert Counter({(r["state"], r["reason"]): r["offers"] for r in figures["offers_by_state"]}) == direct
    finished = sum(
        n for (state, _), n in direct.items() if state in ("submitted", "rejected", "cancelled", "dead_lettered")
    )
    ok = sum(n for (state, _), n in direct.items() if state in ("submitted", "rejected", "cancelled"))
    assert figures["success_rate"] == pytest.approx(ok / finished)
    assert figures["dead_letters"] == dlq and dlq.get("risk", 0) >= 5
    assert figures["active_holds"]["holds"] == holds
    assert set(figures["queue_depths"]) >= {"offers.intake", "offers.payment"}
    assert (figures["validation_ms"]["count"], figures["auction_lag_ms"]["count"]) == (
        timed["validated"],
        timed["triggered"],
    )
    assert figures["validation_ms"]["p95"] == pytest.approx(float(timed["validation_p95"]))
    table = cli("stats")
    assert table.returncode == 0 and "Service levels" in table.stdout and "dead letters · risk" in table.stdout


def test_metrics_are_served_as_prometheus_text(offers_env, tmp_path, dead_lettered) -> None:
    text = monitoring.scrape_once(offers_env, tmp_path)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {
        "offers_by_state",
        "offers_submission_success_rate",
        "offers_dead_letters",
        "offers_active_holds",
        "offers_queue_depth",
        "offers_validation_seconds",
        "offers_partner_errors",
    } <= set(families)
    risk = [s for s in families["offers_dead_letters"].samples if s.labels == {"stage": "risk"}]
    assert risk and risk[0].value >= 5
    sift = [s for s in families["offers_partner_errors"].samples if s.labels.get("partner") == "sift"]
    assert sift and sum(s.value for s in sift) >= 5 * 17  # every attempt of every dead-lettered offer
    # What the alert rules watch beyond `stats` (the beat's lock: tests/integration/test_alerting.py)
    consumers = {s.labels["queue"]: s.value for s in families["offers_queue_consumers"].samples}
    assert consumers["offers.risk"] == 1 and consumers["offers.intake"] == 1, consumers
    assert {"offers_oldest_hold_age_seconds", "offers_audit_export_failed", "offers_sns_publish_failures"} <= set(
        families
    )


def test_a_second_beat_started_by_mistake_sends_nothing_twice(offers_env, tmp_path) -> None:
    beat = next(t for t in read_procfile() if t.name == "beat")
    env = offers_env | {
        "OFFERS_RECOVERY_INTERVAL_SECONDS": "1",
        "OFFERS_REDIS_KEY_PREFIX": offers_env["OFFERS_REDIS_KEY_PREFIX"] + "beats:",
    }

    def sends() -> dict[str, list[float]]:
        return {
            name: [
                datetime.fromisoformat(json.loads(line)["ts"]).timestamp()
                for line in (tmp_path / f"{name}.log").read_text().splitlines()
                if "Sending due task recover-stuck-offers" in line
            ]
            for name in ("beat_a", "beat_b")
        }

    with Fleet(env, tmp_path) as fleet:
        fleet.start(beat, name="beat_a")
        fleet.start(beat, name="beat_b")
        # However long the two take to start on a busy host: until one has sent 4 ticks, and 3 s more
        wait_until(lambda: max(len(t) for t in sends().values()) >= 4, timeout=60, message="a beat to send 4 ticks")
        time.sleep(3)
        assert not fleet.dead()
    sent = sends()
    holder = max(sent.values(), key=len)
    # One beat holds the lock and sends every tick (once a second, never faster); the other waits
    # for the lock and sends nothing
    assert sorted(len(t) for t in sent.values())[0] == 0, {name: len(t) for name, t in sent.items()}
    assert len(holder) <= (holder[-1] - holder[0]) / 1.0 + 2, holder


def test_the_synthetic_journey_passes_and_stays_out_of_stats(runtime) -> None:
    ran = cli("synthetic", "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    journey = json.loads(ran.stdout)
    assert [s["name"] for s in journey["steps"]] == SYNTHETIC_STEPS
    assert all(s["ok"] for s in journey["steps"])
    with runtime.db.transaction() as conn:
        row = conn.execute("SELECT state, synthetic FROM offers WHERE offer_id = %s", (journey["offer_id"],)).fetchone()
        real = conn.execute(
            "SELECT count(*) AS n FROM offers WHERE NOT synthetic AND received_at >= now() - interval '1 hour'"
        ).fetchone()["n"]
    assert (row["state"], row["synthetic"]) == (states.CANCELLED, True)
    figures = json.loads(cli("stats", "--json").stdout)
    assert sum(r["offers"] for r in figures["offers_by_state"]) == real


def test_worker_logs_are_json_lines_without_pii_or_secrets(fleet, settings, dead_lettered) -> None:
    # The session's workers have taken submits (with buyers' emails and IPs) and seen Sift fail.
    lines = [
        line
        for path in fleet.log_dir.glob("*.log")
        for line in path.read_text(errors="replace").splitlines()
        if line.strip()
    ]
    assert len(lines) > 50
    records = [json.loads(line) for line in lines]  # raises on any line that is not one JSON object
    in_tasks = [r for r in records if "task_id" in r]
    assert in_tasks and all({"stage", "attempt"} <= set(r) for r in in_tasks)
    assert any("sift_error" in r for r in records)  # partner failures carry the partner's code
    text = "\n".join(lines)
    for secret in (settings.secret("stripe_api_key"), settings.secret("sift_api_key"), settings.secret("plaid_secret")):
        assert secret and secret not in text
    # Buyers' emails and IPs go to Sift, never into logs in clear
    assert "@example.com" not in text and "203.0.113.9" not in text
