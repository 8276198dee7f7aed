"""RabbitMQ's native delayed delivery (retry countdowns on quorum queues) whatever order the worker
types start in: `worker_partners` alone on a fresh virtual host retries a payment with a countdown,
and the retry comes back through the delay exchanges before the core worker has ever started."""

from __future__ import annotations

from pathlib import Path

import pytest

from offers_workers.domain import states
from offers_workers.local.samples import base_offer
from offers_workers.local.sandbox import clear_faults, get_faults, set_fault
from offers_workers.runtime import Runtime
from offers_workers.saga import intake, stages
from tests.brokers import fleet_stores, rabbitmq_unavailable
from tests.conftest import new_id, wait_until
from tests.drillkit import drill, settings_for

pytestmark = pytest.mark.integration


def test_worker_partners_alone_on_a_fresh_vhost_retries_a_payment_with_a_countdown(
    offers_env: dict[str, str], tmp_path: Path
) -> None:
    if reason := rabbitmq_unavailable():
        pytest.skip(reason)
    with fleet_stores(offers_env, "rabbitmq", "delayed", tmp_path / "sandbox") as (box, env):
        # Given an offer validated by the core stages (called directly: no core worker runs)
        rt = Runtime(settings_for(env))
        try:
            offer = base_offer(new_id("delay"), 3)
            assert intake.submit(rt, offer).outcome == "accepted"
            stages.validate(rt, offer["offer_id"])
        finally:
            rt.close()
        set_fault(box, "stripe", status=503)
        # When worker_partners starts alone on the fresh virtual host and gets the payment stage
        with drill("delayed", env, tmp_path, process_types=("worker_partners",)) as d:
            d.app.send_task("offers.stage.hold_payment", kwargs={"offer_id": offer["offer_id"]})
            # Then Stripe's 503 sends it back with a countdown, and the retry arrives
            wait_until(
                lambda: get_faults(box, "stripe")["stripe"]["injected"] >= 2,
                timeout=60,
                message="the payment stage's retry to come back through the delay exchanges",
            )
            clear_faults(box)
            wait_until(
                lambda: _state(d, offer["offer_id"]) != states.VALIDATED,
                timeout=60,
                message="the retried payment stage to place the hold",
            )
            assert _state(d, offer["offer_id"]) in (states.PAYMENT_HELD, states.RISK_CLEARED, states.AUCTION_TRIGGERED)
            log = (d.fleet.log_dir / "worker_partners.log").read_text(errors="replace")
        # And no start-up order logs a failure to bind the delay exchanges
        for said in ("Failed to bind", "NOT_FOUND", "Native delayed delivery will not be available"):
            assert said not in log, f"worker_partners logged {said!r}"


def _state(d, offer_id: str) -> str:
    with d.runtime.db.read() as conn:
        row = conn.execute("SELECT state FROM offers WHERE offer_id = %s", (offer_id,)).fetchone()
    return row["state"]
