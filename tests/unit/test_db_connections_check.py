"""`health`'s db_connections check: connections in use against what a non-superuser may open,
a warning from 80 %, a breach from 95 %."""

from __future__ import annotations

import pytest

from offers_workers.ops.health import db_connections_check
from offers_workers.store.connections import ConnectionUsage


def usage(active: int, idle: int, *, max_connections: int = 100, reserved: int = 3) -> ConnectionUsage:
    return ConnectionUsage(
        by_state={"active": active, "idle": idle},
        max_connections=max_connections,
        reserved=reserved,
        fleet_by_process={"prefork": 2, "threads": 12},
    )


@pytest.mark.parametrize(
    ("in_use", "ok", "warning"),
    [(10, True, False), (77, True, False), (78, True, True), (92, True, True), (93, False, False), (99, False, False)],
)
def test_levels_are_shares_of_what_a_non_superuser_may_open(in_use: int, ok: bool, warning: bool) -> None:
    # 100 less 3 reserved: 97 to share; 78 is the first at 80 %, 93 the first at 95 %
    check = db_connections_check(usage(in_use - 5, 5))
    assert (check.ok, check.warning) == (ok, warning)
    assert check.value.startswith(f"{in_use} of 97 (")


def test_the_detail_names_states_and_the_fleets_processes() -> None:
    check = db_connections_check(usage(3, 20))
    assert check.detail == ["active: 3", "idle: 20", "this database, prefork: 2", "this database, threads: 12"]
    assert check.symptom == "Postgres connections near max_connections" and check.first_checks


def test_a_server_with_every_slot_reserved_does_not_divide_by_zero() -> None:
    check = db_connections_check(usage(1, 0, max_connections=3, reserved=3))
    assert not check.ok
