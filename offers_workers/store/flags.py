"""The runbook's feature flags, stored in Postgres and read through a short per-process cache, so a
change reaches every worker within seconds without a restart. Every change is in the audit trail.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime

from offers_workers.store import audit_trail
from offers_workers.store.db import Connection, Database

#: Flag → what turning it off (or on, for SOFT_LAUNCH_MODE) does.
FLAGS = {
    "OFFER_SUBMISSION_ENABLED": "off: new submits are recorded and rejected submission_disabled; offers in flight finish",
    "REAL_TIME_VALIDATION": "off: offers.validate_draft answers that real-time validation is off",
    "SOFT_LAUNCH_MODE": "on: intake admits offers at the global soft-launch rate (and only allow-listed makers, if set)",
}
DEFAULTS = {"OFFER_SUBMISSION_ENABLED": True, "REAL_TIME_VALIDATION": True, "SOFT_LAUNCH_MODE": False}


class UnknownFlag(ValueError):
    pass


@dataclass(frozen=True)
class Flag:
    name: str
    enabled: bool
    updated_at: datetime | None
    updated_by: str


class FlagStore:
    def __init__(self, db: Database, cache_seconds: float) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        self._values: dict[str, bool] = {}
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def enabled(self, name: str) -> bool:
        if name not in FLAGS:
            raise UnknownFlag(name)
        with self._lock:
            if time.monotonic() - self._read_at > self.cache_seconds:
                with self.db.transaction() as conn:
                    self._values = {
                        r["name"]: r["enabled"] for r in conn.execute("SELECT name, enabled FROM feature_flags")
                    }
                self._read_at = time.monotonic()
            return self._values.get(name, DEFAULTS[name])

    def all(self) -> list[Flag]:
        with self.db.transaction() as conn:
            found = {r["name"]: r for r in conn.execute("SELECT * FROM feature_flags")}
        return [
            Flag(n, found[n]["enabled"], found[n]["updated_at"], found[n]["updated_by"])
            if n in found
            else Flag(n, DEFAULTS[n], None, "default")
            for n in FLAGS
        ]


def set_flag(conn: Connection, name: str, enabled: bool, *, actor: str) -> bool:
    """Set a flag; returns whether it changed. The change is recorded in the audit trail."""
    if name not in FLAGS:
        raise UnknownFlag(name)
    before = conn.execute("SELECT enabled FROM feature_flags WHERE name = %s FOR UPDATE", (name,)).fetchone()
    conn.execute(
        "INSERT INTO feature_flags (name, enabled, updated_by) VALUES (%s, %s, %s)"
        " ON CONFLICT (name) DO UPDATE SET enabled = EXCLUDED.enabled, updated_by = EXCLUDED.updated_by, updated_at = clock_timestamp()",
        (name, enabled, actor),
    )
    was = before["enabled"] if before else DEFAULTS[name]
    audit_trail.record_audit(
        conn, None, "flag_changed", actor=actor, reason=name, data={"flag": name, "from": was, "to": enabled}
    )
    return was != enabled
