"""A quick run of the audit-path bench (``python -m offers_workers.local.audit_bench --quick``): it
starts its own cluster, runs pgbench, verifies the chain and leaves nothing behind. Its figures are
not asserted (a benchmark is not a timed test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from offers_workers.local.audit_bench import parse_pgbench, pgbench_missing

pytestmark = pytest.mark.integration

PGBENCH_15 = """\
transaction type: audit_insert.sql
number of clients: 8
number of transactions actually processed: 1149
number of failed transactions: 0 (0.000%)
latency average = 13.823 ms
tps = 578.812345 (without initial connection time)
"""


def test_pgbench_summary_is_read() -> None:
    figures = parse_pgbench(PGBENCH_15)
    assert figures == {"tps": 578.812345, "transactions": 1149, "failed": 0, "latency_ms": 13.823}
    # pgbench before 15 prints no failed line
    assert parse_pgbench(PGBENCH_15.replace("number of failed transactions: 0 (0.000%)\n", ""))["failed"] is None


@pytest.mark.skipif(pgbench_missing() is not None, reason=pgbench_missing() or "")
def test_audit_bench_quick(tmp_path: Path) -> None:
    # Its scratch cluster lives under TMPDIR: nothing of it may be left there afterwards.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "offers_workers.local.audit_bench", "--quick", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads(done.stdout)
    schemas = ["before", "after"] if figures["after_schema"] else ["before"]
    assert [(c["schema"], c["clients"], c["rtt_ms"]) for c in figures["cells"]] == [(s, 8, 0.0) for s in schemas]
    assert all(c["tps"] > 0 and c["failed"] == 0 for c in figures["cells"])
    assert figures["verify_chain"]["ok"], figures["verify_chain"]
    assert "Audit path" in done.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("offers-pg-")]
    # and its server is stopped, not left to notice its data directory is gone
    assert not [p.pid for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
