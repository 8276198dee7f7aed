"""The Postgres server's connections against what it allows: the connection budget's figures, for
``health``, ``stats`` and ``/metrics`` (docs/operations.md, section 3)."""

from __future__ import annotations

from dataclasses import dataclass

from offers_workers.store.db import Connection, one_row

#: pg_stat_activity's type of a session a client opened; the only kind max_connections counts.
CLIENT_BACKEND = "client backend"


@dataclass(frozen=True)
class ConnectionUsage:
    """Client connections to the server (every database and role) by state, and the server's limits."""

    by_state: dict[str, int]
    max_connections: int
    #: Slots only superusers (and, from Postgres 16, pg_use_reserved_connections) may take.
    reserved: int
    #: This database's connections from the fleet, by process type (its pools' application_name).
    fleet_by_process: dict[str, int]

    @property
    def in_use(self) -> int:
        return sum(self.by_state.values())

    @property
    def available(self) -> int:
        """What the fleet's role may open at most, when it is not a superuser."""
        return max(1, self.max_connections - self.reserved)

    @property
    def share(self) -> float:
        return self.in_use / self.available


def usage(conn: Connection, application_prefix: str) -> ConnectionUsage:
    """Connections in use now. A role without pg_read_all_stats (pg_monitor) sees other roles'
    sessions without their type or state: those count as client sessions, in state ``unknown``,
    so the figure errs high (by at most the autovacuum workers running), never low."""
    states = conn.execute(
        "SELECT coalesce(state, 'unknown') AS state, count(*) AS n FROM pg_stat_activity"
        " WHERE datid IS NOT NULL AND usesysid IS NOT NULL AND coalesce(backend_type, %s) = %s"
        " GROUP BY 1 ORDER BY 1",
        (CLIENT_BACKEND, CLIENT_BACKEND),
    ).fetchall()
    limits = one_row(
        conn.execute(
            "SELECT current_setting('max_connections')::int AS max_connections,"
            " current_setting('superuser_reserved_connections')::int"
            # reserved_connections exists from Postgres 16 on; missing_ok gives NULL before
            " + coalesce(current_setting('reserved_connections', true)::int, 0) AS reserved"
        )
    )
    fleet = conn.execute(
        "SELECT substr(application_name, %s) AS process, count(*) AS n FROM pg_stat_activity"
        " WHERE datname = current_database() AND starts_with(application_name, %s)"
        " GROUP BY 1 ORDER BY 1",
        (len(application_prefix) + 1, application_prefix),
    ).fetchall()
    return ConnectionUsage(
        by_state={r["state"]: r["n"] for r in states},
        max_connections=limits["max_connections"],
        reserved=limits["reserved"],
        fleet_by_process={r["process"]: r["n"] for r in fleet},
    )
