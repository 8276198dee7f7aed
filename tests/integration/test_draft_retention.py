"""Checked drafts (``draft_validations``, the funnel's first step in ``stats``) are kept for
``OFFERS_DRAFT_VALIDATIONS_KEPT`` and then deleted by the beat's hourly job, so the table a
validation per keystroke fills does not grow for ever."""

from __future__ import annotations

from typing import Any

import pytest

from config.beat import beat_schedule
from offers_workers.saga import drafts
from tests.conftest import new_id, wait_until

pytestmark = pytest.mark.integration

DAY_S = 86_400


def add_drafts(runtime: Any, prefix: str, count: int, days_ago: float) -> list[str]:
    ids = [f"{prefix}_{n}" for n in range(count)]
    with runtime.db.transaction() as conn:
        for offer_id in ids:
            conn.execute(
                "INSERT INTO draft_validations (validated_at, offer_id, listing_id, maker_id, valid)"
                " VALUES (clock_timestamp() - make_interval(secs => %s), %s, 'lst_1', 'mkr_1', true)",
                (days_ago * DAY_S, offer_id),
            )
    return ids


def kept(runtime: Any, ids: list[str]) -> set[str]:
    with runtime.db.read() as conn:
        rows = conn.execute("SELECT offer_id FROM draft_validations WHERE offer_id = ANY(%s)", (ids,))
        return {r["offer_id"] for r in rows}


def test_the_beats_job_deletes_drafts_past_the_retention_and_keeps_the_rest(
    runtime: Any, settings: Any, fleet: Any, celery_app: Any
) -> None:
    prefix = new_id("draft_retention")
    old = add_drafts(runtime, f"{prefix}_old", 3, days_ago=36)
    recent = add_drafts(runtime, f"{prefix}_recent", 3, days_ago=34)

    # The job exactly as the beat sends it, run by the Procfile's workers.
    job = beat_schedule(settings)["trim-draft-validations"]
    # The retention is the setting's (P35D by default), never the message's: the job carries none.
    assert "kwargs" not in job
    celery_app.send_task(job["task"])

    wait_until(lambda: not kept(runtime, old), timeout=60, message="drafts older than 35 days deleted")
    assert kept(runtime, old + recent) == set(recent)


def test_old_drafts_go_in_batches_until_none_is_left(runtime: Any) -> None:
    prefix = new_id("draft_batches")
    old = add_drafts(runtime, f"{prefix}_old", 12, days_ago=400)
    recent = add_drafts(runtime, f"{prefix}_recent", 2, days_ago=0)

    # 12 rows, 5 per statement: three statements, the last one short.
    assert drafts.trim_validations(runtime, older_than_s=399 * DAY_S, batch=5) == len(old)
    assert kept(runtime, old + recent) == set(recent)
