"""What the local benchmarks ask of Postgres: a scratch cluster's settings, sample offers, pgbench's
scripts (``store/pgbench/``) and the counters a run is measured with. Never used by the fleet."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from psycopg import sql

from offers_workers.store.db import Connection, connect

#: pgbench's scripts, by the variant of the audit bench that runs them.
SCRIPTS = {"insert": "audit_insert.sql", "transition": "transition.sql"}


def script_path(variant: str) -> Path:
    """The file pgbench reads for ``variant`` (it takes a path, not text)."""
    return Path(str(resources.files("offers_workers.store.pgbench") / SCRIPTS[variant]))


def set_server_settings(url: str, settings: dict[str, str]) -> None:
    """ALTER SYSTEM each setting (a scratch cluster's; some take effect only after a restart)."""
    with connect(url, autocommit=True) as conn:
        for name, value in settings.items():
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))


def server_setting(url: str, name: str) -> str:
    with connect(url) as conn:
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
        return str(row[0]) if row else ""


def seed_offers(url: str, count: int) -> None:
    """``count`` offers ``bench-1``… in ``validated``, for the transition variant to move."""
    with connect(url) as conn:
        conn.execute(
            "INSERT INTO offers (offer_id, listing_id, maker_id, buyer_id, amount_cents, currency,"
            " payment_method, payload, body_sha256, state)"
            " SELECT 'bench-' || n, 'lst_bench', 'mkr_bench', 'buyer-' || n, 10000, 'USD', 'card', '{}'::jsonb,"
            " md5(n::text), 'validated' FROM generate_series(1, %s) AS n",
            (count,),
        )
        conn.commit()
    vacuum_analyze(url)


def vacuum_analyze(url: str) -> None:
    with connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def checkpoint(url: str) -> None:
    """Write dirty pages now, so a checkpoint does not land inside the next measured cell."""
    with connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def audit_bytes_per_row(url: str) -> float | None:
    """audit_events' size on disk with its indexes and TOAST, per row (for the retention arithmetic)."""
    with connect(url) as conn:
        row = conn.execute(
            "SELECT pg_total_relation_size('audit_events'::regclass)::float8 / nullif(count(*), 0) FROM audit_events"
        ).fetchone()
        return round(float(row[0])) if row and row[0] is not None else None


def audit_row_count(url: str) -> int:
    with connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM audit_events").fetchone()
        return int(row[0]) if row else 0


def transactions_by_database(conn: Connection) -> dict[int, int]:
    """Transactions ended (committed or rolled back) so far, by database oid. A dropped database's
    row goes with it, so a run that drops its database is sampled while it runs."""
    rows = conn.execute("SELECT datid, xact_commit + xact_rollback FROM pg_stat_database WHERE datid <> 0").fetchall()
    return {int(r[0]): int(r[1]) for r in rows}


def next_xid(url: str) -> int:
    """The next transaction id the server will assign (write transactions take one; this read does not)."""
    with connect(url) as conn:
        row = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()
        return int(row[0]) if row else 0


def server_facts(url: str) -> dict[str, Any]:
    with connect(url) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version') AS version, current_setting('max_connections') AS max_connections,"
            " current_setting('shared_buffers') AS shared_buffers,"
            " current_setting('synchronous_commit') AS synchronous_commit, current_setting('fsync') AS fsync"
        ).fetchone()
        names = ("version", "max_connections", "shared_buffers", "synchronous_commit", "fsync")
        return dict(zip(names, row, strict=True)) if row else {}
