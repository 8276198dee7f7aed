"""CLI arguments that look like SQL or options are data: refused or looked up, never executed."""

from __future__ import annotations

import pytest

from tests.conftest import cli

HOSTILE = "x'; DROP TABLE offers; --"


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("offers", "show", HOSTILE), 1, "no offer"),
        (("offers", "show", "--", "--help"), 1, "no offer '--help'"),
        (("dlq", "show", "1; DELETE FROM dead_letters"), 2, "is not a valid integer"),
        (("holds", "release", "--offer", HOSTILE), 1, "has no active hold"),
        (("cancel", "--reason", "ops", "--", HOSTILE), 2, "is not an offer id"),
        (("flags", "set", "OFFER_SUBMISSION_ENABLED; --", "on"), 2, "unknown flag"),
        (
            ("audit", "verify-chain", "--since", "now(); DROP TABLE audit_events"),
            2,
            "neither an ISO timestamp nor a duration",
        ),
    ],
)
def test_hostile_arguments_are_handled_as_data(runtime, args: tuple[str, ...], code: int, says: str) -> None:
    result = cli(*args)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert says in result.stdout + result.stderr
    with runtime.db.transaction() as conn:
        tables = {r["tablename"] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"offers", "dead_letters", "audit_events"} <= tables
