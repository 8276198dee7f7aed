"""The shipped alert rules, end to end: Prometheus scrapes a running fleet's /metrics and evaluates
monitoring/alerts.yml, Alertmanager routes to a webhook standing for PagerDuty. A Sift outage pages
with the runbook's links; clearing it (the outage over, the dead letters replayed) resolves the pages.

The rules run with their windows and `for` shortened to seconds (tests/monitoring.py, fast_rules):
the expressions, labels and annotations are the shipped ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from offers_workers.domain import states
from offers_workers.local.embedded import free_port
from tests import monitoring
from tests.conftest import cli, project_root, wait_until
from tests.contract.markdown import anchors
from tests.drillkit import drill
from tests.outages import all_in, send_offers, through_sift_outage

needs_prometheus = pytest.mark.skipif(
    bool(reason := monitoring.missing(monitoring.PROMETHEUS, monitoring.ALERTMANAGER)), reason=reason or ""
)

PAGES = {("OffersPartnerErrors", "partner", "sift"), ("OffersDeadLettersPending", "stage", "risk")}


def paged(alerts: list[dict], wanted: set[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    return {w for w in wanted for a in alerts if a["labels"]["alertname"] == w[0] and a["labels"].get(w[1]) == w[2]}


@needs_prometheus
def test_a_sift_outage_pages_with_runbook_links_and_clearing_it_resolves(offers_env, sandbox, tmp_path: Path) -> None:
    metrics_port = free_port()
    rules = monitoring.fast_rules(tmp_path / "alerts.yml")
    with (
        drill(
            "alerting",
            offers_env,
            tmp_path / "logs",
            process_types=("worker", "worker_partners", "beat", "metrics"),
            OFFERS_METRICS_PORT=str(metrics_port),
        ) as d,
        monitoring.Receiver() as pagerduty,
        monitoring.alertmanager(tmp_path / "alertmanager", pagerduty.url) as am,
        monitoring.prometheus(tmp_path / "prometheus", metrics_port, am, rules) as prom,
    ):
        # Prometheus sees the fleet: the endpoint up, the beat holding its lock, every queue consumed
        wait_until(lambda: monitoring.query(prom, 'up{job="offers-workers"} == 1'), timeout=60, message="a scrape")
        wait_until(lambda: monitoring.query(prom, "offers_beat_running == 1"), timeout=60, message="the beat's lock")
        # (metrics serve asks the workers every 15 s: the first answer may predate them)
        wait_until(
            lambda: (
                monitoring.query(prom, "offers_queue_consumers > 0")
                and not monitoring.query(prom, "offers_queue_consumers == 0")
            ),
            timeout=60,
            message="every queue consumed",
        )

        ids = through_sift_outage(d.app, d.runtime, sandbox, "alerting", 10)
        wait_until(lambda: paged(pagerduty.alerts("firing"), PAGES) == PAGES, timeout=90, message="the outage's pages")
        on_call = anchors((project_root() / "docs" / "on-call.md").read_text())
        for alert in pagerduty.alerts("firing"):
            if alert["labels"]["alertname"] in {name for name, _, _ in PAGES}:
                link = alert["annotations"]["runbook_url"]
                assert link.startswith("docs/on-call.md#") and link.split("#", 1)[1] in on_call, link
                assert alert["labels"]["severity"] in {"warning", "page"} and alert["annotations"]["first_checks"]
        assert not paged(pagerduty.alerts("resolved"), PAGES)

        # The outage is over (faults cleared); replaying the dead letters empties the queue
        replay = cli("dlq", "replay", "--all", "--stage", "risk", env=d.env)
        assert replay.returncode == 0, replay.stderr
        wait_until(lambda: all_in(d.runtime, ids, states.SUBMITTED), timeout=90, message="replayed offers submitted")
        wait_until(
            lambda: paged(pagerduty.alerts("resolved"), PAGES) == PAGES, timeout=120, message="the pages resolved"
        )


def test_sns_publish_failures_are_counted_by_topic_for_metrics(offers_env, settings, tmp_path: Path) -> None:
    """A cancelled-offers topic that does not exist (a deleted topic, a wrong ARN): each failed
    publish is counted under its topic on /metrics, which OffersSnsPublishFailures reads."""
    gone = settings.sns_cancelled_topic_arn.rsplit(":", 1)[0] + ":offers-cancelled-gone"
    metrics_port = free_port()
    with drill(
        "snsfail",
        offers_env,
        tmp_path / "logs",
        process_types=("worker", "worker_partners", "metrics"),
        OFFERS_METRICS_PORT=str(metrics_port),
        OFFERS_SNS_CANCELLED_TOPIC_ARN=gone,
    ) as d:
        ids = send_offers(d.app, "snsfail", 2)
        wait_until(lambda: all_in(d.runtime, ids, states.SUBMITTED), timeout=60, message="offers submitted")
        for offer_id in ids:
            d.app.send_task("offers.cancel", kwargs={"offer_id": offer_id, "reason": "ops", "actor": "ops"})
        wait_until(lambda: all_in(d.runtime, ids, states.CANCELLED), timeout=60, message="offers cancelled")

        def failures() -> dict[str, float]:
            text = monitoring.read_metrics(metrics_port)
            if text is None:
                return {}
            family = next(f for f in text_string_to_metric_families(text) if f.name == "offers_sns_publish_failures")
            return {s.labels["topic"]: s.value for s in family.samples}

        counted = wait_until(
            lambda: failures().get("offers-cancelled-gone", 0) >= 2 and failures(),
            timeout=60,
            message="the failed publishes counted",
        )
        assert set(counted) == {"offers-cancelled-gone"}  # the submitted topic's publishes all went out
